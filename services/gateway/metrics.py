"""Prometheus metrics of the gateway (latency of every stage, as seen by the caller)."""

from prometheus_client import Gauge, Histogram

_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60)

TIME_TO_FIRST_AUDIO = Histogram(
    "stepaudio_gateway_time_to_first_audio_seconds",
    "Chat turns: from the end of user input (request arrival) to the first reply PCM chunk sent.",
    buckets=_LATENCY_BUCKETS,
)
CHAT_TIME_TO_FIRST_TOKEN = Histogram(
    "stepaudio_gateway_chat_time_to_first_token_seconds",
    "Chat stage: from the Generate call to its first text delta.",
    buckets=_LATENCY_BUCKETS,
)
TTS_FIRST_CHUNK = Histogram(
    "stepaudio_gateway_tts_first_chunk_seconds",
    "TTS stage: from a Synthesize call to its first PCM chunk.",
    buckets=_LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "stepaudio_gateway_stage_duration_seconds",
    "Wall time of each stage call, by stage (tokenize, chat, tts).",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)
TTS_REAL_TIME_FACTOR = Histogram(
    "stepaudio_gateway_tts_real_time_factor",
    "TTS stage: synthesis wall time divided by audio duration, per Synthesize call.",
    buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 4),
)
INTER_CHUNK_GAP = Histogram(
    "stepaudio_gateway_inter_chunk_gap_seconds",
    "Chat turns: time between consecutive reply audio chunks sent to the client.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
ACTIVE_TURNS = Gauge("stepaudio_gateway_active_turns", "Chat turns in progress.")
BUFFERED_EVENTS = Gauge(
    "stepaudio_gateway_buffered_events",
    "Reply events (text deltas, audio chunks) produced by the stages and waiting for clients to read them.",
)
