"""The wire format of the Realtime WebSocket (OpenAI's Realtime event protocol): the session configuration a
client sets with ``session.update`` and the server events that describe it and each response. Pure: no I/O.

Two dialects of the same protocol exist: the beta one (``OpenAI-Beta: realtime=v1``; a flat session,
``response.audio.delta``) and the GA one (``session.type = "realtime"``; nested ``audio.input``/``audio.output``,
``response.output_audio.delta``). Events are built under their beta names and renamed on the way out for GA.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from services.http.speech_options import CONTROL_VALUES

BETA = "beta"
GA = "ga"

# Beta event name -> GA event name, for the events whose name changed.
_GA_NAMES = {
    "conversation.item.created": "conversation.item.added",
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
}


@dataclass(frozen=True)
class AudioFormat:
    """An audio format of the protocol: its beta name, GA type and sample rate."""

    name: str
    ga_type: str
    sample_rate_hz: int


AUDIO_FORMATS = {
    "pcm16": AudioFormat("pcm16", "audio/pcm", 24000),
    "g711_ulaw": AudioFormat("g711_ulaw", "audio/pcmu", 8000),
    "g711_alaw": AudioFormat("g711_alaw", "audio/pcma", 8000),
}
_FORMAT_BY_GA_TYPE = {audio_format.ga_type: audio_format for audio_format in AUDIO_FORMATS.values()}


class RealtimeError(Exception):
    """A client event the server cannot act on; the client gets an ``error`` event and the socket stays open."""

    def __init__(
        self, message: str, param: str | None = None, code: str | None = None, type: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.type = type


@dataclass(frozen=True)
class TurnDetection:
    """Server VAD. The endpointing itself is the tokenizer stage's (its TOKENIZER_VAD_* settings); these values are
    kept and reported, not applied per connection."""

    type: str = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True


@dataclass(frozen=True)
class VoiceControlChoice:
    """The ``voice_controls`` extension: the cluster's typed voice controls by value name (speech_options'
    ``CONTROL_VALUES``; "" is none)."""

    emotion: str = ""
    language: str = ""
    style: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def requested(self) -> tuple[str, ...]:
        """The names of the controls that are set."""
        return tuple(name for name, value in self.as_dict().items() if value)


@dataclass(frozen=True)
class SessionConfig:
    """What a connection's client has configured, in protocol terms."""

    id: str
    model: str
    instructions: str = ""
    voice: str = "alloy"
    input_format: AudioFormat = AUDIO_FORMATS["pcm16"]
    output_format: AudioFormat = AUDIO_FORMATS["pcm16"]
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    transcription_model: str = ""
    language: str = ""
    modalities: tuple[str, ...] = ("text", "audio")
    temperature: float | None = None
    max_output_tokens: int | None = None
    speed: float | None = None
    voice_controls: VoiceControlChoice = VoiceControlChoice()

    @property
    def speaks(self) -> bool:
        return "audio" in self.modalities


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def wire_name(event_type: str, dialect: str) -> str:
    return _GA_NAMES.get(event_type, event_type) if dialect == GA else event_type


def is_ga_session(session: dict) -> bool:
    """A GA ``session.update`` names its type; the beta one has no such field."""
    return session.get("type") == "realtime"


# --- session.update ---------------------------------------------------------------------------------------------


def apply_session_update(
    config: SessionConfig, session: Any, speed_range: tuple[float, float], where: str = "session"
) -> SessionConfig:
    """``config`` with the fields of a ``session.update``'s ``session`` (or a ``response.create``'s ``response``,
    ``where`` names which) applied, in either dialect's shape; unknown fields (tools, tracing, noise reduction) are
    ignored. Raises ``RealtimeError`` naming the bad field."""
    _require_object(session, where)
    changes: dict[str, Any] = {}
    if "instructions" in session:
        changes["instructions"] = _string(session["instructions"], f"{where}.instructions")
    if "voice" in session:
        changes["voice"] = _voice(session["voice"], f"{where}.voice")
    if "input_audio_format" in session:
        changes["input_format"] = _beta_format(session["input_audio_format"], f"{where}.input_audio_format")
    if "output_audio_format" in session:
        changes["output_format"] = _beta_format(session["output_audio_format"], f"{where}.output_audio_format")
    if "turn_detection" in session:
        changes["turn_detection"] = _turn_detection(session["turn_detection"], config, f"{where}.turn_detection")
    if "input_audio_transcription" in session:
        changes["language"] = _transcription_language(
            session["input_audio_transcription"], config, f"{where}.input_audio_transcription"
        )
    for key in ("modalities", "output_modalities"):
        if key in session:
            changes["modalities"] = _modalities(session[key], f"{where}.{key}")
    if "temperature" in session:
        changes["temperature"] = _number(session["temperature"], f"{where}.temperature", 0.0, 2.0)
    for key in ("max_response_output_tokens", "max_output_tokens"):
        if key in session:
            changes["max_output_tokens"] = max_output_tokens(session[key], f"{where}.{key}")
    if "speed" in session:
        changes["speed"] = _number(session["speed"], f"{where}.speed", *speed_range)
    if "audio" in session:
        changes.update(_ga_audio(session["audio"], config, speed_range, where))
    if "voice_controls" in session:
        changes["voice_controls"] = _voice_controls(session["voice_controls"], config, f"{where}.voice_controls")
    return replace(config, **changes)


def _ga_audio(audio: Any, config: SessionConfig, speed_range: tuple[float, float], where: str) -> dict[str, Any]:
    _require_object(audio, f"{where}.audio")
    changes: dict[str, Any] = {}
    audio_in = audio.get("input") or {}
    audio_out = audio.get("output") or {}
    _require_object(audio_in, f"{where}.audio.input")
    _require_object(audio_out, f"{where}.audio.output")
    if "format" in audio_in:
        changes["input_format"] = _ga_format(audio_in["format"], f"{where}.audio.input.format")
    if "turn_detection" in audio_in:
        changes["turn_detection"] = _turn_detection(
            audio_in["turn_detection"], config, f"{where}.audio.input.turn_detection"
        )
    if "transcription" in audio_in:
        changes["language"] = _transcription_language(
            audio_in["transcription"], config, f"{where}.audio.input.transcription"
        )
    if "format" in audio_out:
        changes["output_format"] = _ga_format(audio_out["format"], f"{where}.audio.output.format")
    if "voice" in audio_out:
        changes["voice"] = _voice(audio_out["voice"], f"{where}.audio.output.voice")
    if "speed" in audio_out:
        changes["speed"] = _number(audio_out["speed"], f"{where}.audio.output.speed", *speed_range)
    return changes


def _require_object(value: Any, param: str) -> None:
    if not isinstance(value, dict):
        raise RealtimeError(f"'{param}' must be an object", param=param)


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise RealtimeError(f"'{param}' must be a string", param=param)
    return value


def _number(value: Any, param: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RealtimeError(f"'{param}' must be a number from {low:g} to {high:g}", param=param, code="invalid_value")
    return float(value)


def _voice(value: Any, param: str) -> str:
    """A voice name, or GA's custom-voice object ``{"id": ...}``."""
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or not value:
        raise RealtimeError(f"'{param}' must be a voice name", param=param)
    return value


def _voice_controls(value: Any, config: SessionConfig, param: str) -> VoiceControlChoice:
    """The extension's object over the current choice: a control left out keeps its value; "" or null clears it."""
    _require_object(value, param)
    changes: dict[str, str] = {}
    for name, chosen in value.items():
        if name not in CONTROL_VALUES:
            raise RealtimeError(
                f"Unknown parameter: '{param}.{name}'. Supported: {', '.join(CONTROL_VALUES)}.",
                param=f"{param}.{name}",
                code="unknown_parameter",
            )
        chosen = chosen or ""
        if chosen not in ("", *CONTROL_VALUES[name]):
            raise RealtimeError(
                f"Invalid value for '{param}.{name}': {chosen!r}. Supported values are: '' (none), "
                f"{', '.join(CONTROL_VALUES[name])}.",
                param=f"{param}.{name}",
                code="invalid_value",
            )
        changes[name] = chosen
    return replace(config.voice_controls, **changes)


def _beta_format(value: Any, param: str) -> AudioFormat:
    if value not in AUDIO_FORMATS:
        raise RealtimeError(
            f"Invalid value for '{param}': {value!r}. Supported values are: {', '.join(AUDIO_FORMATS)}.",
            param=param,
            code="invalid_value",
        )
    return AUDIO_FORMATS[value]


def _ga_format(value: Any, param: str) -> AudioFormat:
    _require_object(value, param)
    audio_format = _FORMAT_BY_GA_TYPE.get(value.get("type", "audio/pcm"))
    if audio_format is None:
        raise RealtimeError(
            f"Invalid value for '{param}.type': {value.get('type')!r}. Supported values are: "
            f"{', '.join(_FORMAT_BY_GA_TYPE)}.",
            param=f"{param}.type",
            code="invalid_value",
        )
    if value.get("rate", audio_format.sample_rate_hz) != audio_format.sample_rate_hz:
        raise RealtimeError(
            f"'{param}.rate' must be {audio_format.sample_rate_hz} for {audio_format.ga_type}",
            param=f"{param}.rate",
            code="invalid_value",
        )
    return audio_format


def _turn_detection(value: Any, config: SessionConfig, param: str) -> TurnDetection | None:
    """``null`` turns server VAD off (manual turns); an object turns it on, over the current values. Semantic VAD
    is served by the same VAD."""
    if value is None:
        return None
    _require_object(value, param)
    kind = value.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise RealtimeError(
            f"Invalid value for '{param}.type': {kind!r}. Supported values are: server_vad, semantic_vad.",
            param=f"{param}.type",
            code="invalid_value",
        )
    current = config.turn_detection or TurnDetection()
    changes: dict[str, Any] = {"type": kind}
    if "threshold" in value:
        changes["threshold"] = _number(value["threshold"], f"{param}.threshold", 0.0, 1.0)
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        if key in value:
            changes[key] = int(_number(value[key], f"{param}.{key}", 0, 10_000))
    for key in ("create_response", "interrupt_response"):
        if key in value:
            if not isinstance(value[key], bool):
                raise RealtimeError(f"'{param}.{key}' must be a boolean", param=f"{param}.{key}")
            changes[key] = value[key]
    if changes.get("create_response") is False:
        raise RealtimeError(
            "turn_detection.create_response false is not supported: the gateway answers each utterance it detects "
            "(turn detection null gives manual turns)",
            param=f"{param}.create_response",
            code="unsupported_value",
        )
    return replace(current, **changes)


def _transcription_language(value: Any, config: SessionConfig, param: str) -> str:
    """Transcription always runs (the gateway needs the words); only its language hint is taken from here."""
    if value is None:
        return config.language
    _require_object(value, param)
    return _string(value.get("language") or "", f"{param}.language")


def _modalities(value: Any, param: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or any(item not in ("text", "audio") for item in value):
        raise RealtimeError(
            f"'{param}' must be a non-empty list of 'text' and 'audio'", param=param, code="invalid_value"
        )
    return tuple(dict.fromkeys(value))


def max_output_tokens(value: Any, param: str) -> int | None:
    """An integer 1..4096, or ``"inf"`` (``None``: the chat stage's default)."""
    if value == "inf" or value is None:
        return None
    return int(_integer(value, param, 1, 4096))


def _integer(value: Any, param: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RealtimeError(
            f"'{param}' must be an integer from {low} to {high}, or 'inf'", param=param, code="invalid_value"
        )
    return value


# --- rendering --------------------------------------------------------------------------------------------------


def render_session(config: SessionConfig, dialect: str, ignored_controls: tuple[str, ...] = ()) -> dict:
    """The ``session`` object of session.created / session.updated, in the dialect's shape. The ``voice_controls``
    extension is at its top level in both: the choice, and the names of the ``ignored_controls`` (the ones the
    session's voice does not honour, left out of its requests)."""
    extension = {"voice_controls": config.voice_controls.as_dict(), "voice_controls_ignored": list(ignored_controls)}
    turn_detection = _render_turn_detection(config.turn_detection)
    transcription = {"model": config.transcription_model, "language": config.language or None}
    max_tokens = config.max_output_tokens or "inf"
    if dialect == GA:
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": config.id,
            "model": config.model,
            "output_modalities": ["text"] if not config.speaks else ["audio"],
            "instructions": config.instructions,
            "audio": {
                "input": {
                    "format": render_format(config.input_format, GA),
                    "transcription": transcription,
                    "turn_detection": turn_detection,
                    "noise_reduction": None,
                },
                "output": {
                    "format": render_format(config.output_format, GA),
                    "voice": config.voice,
                    "speed": config.speed or 1.0,
                },
            },
            "max_output_tokens": max_tokens,
            "tools": [],
            "tool_choice": "auto",
            **extension,
        }
    return {
        "object": "realtime.session",
        "id": config.id,
        "model": config.model,
        "modalities": list(config.modalities),
        "instructions": config.instructions,
        "voice": config.voice,
        "input_audio_format": config.input_format.name,
        "output_audio_format": config.output_format.name,
        "input_audio_transcription": transcription,
        "turn_detection": turn_detection,
        "temperature": config.temperature if config.temperature is not None else 0.8,
        "max_response_output_tokens": max_tokens,
        "speed": config.speed or 1.0,
        "tools": [],
        "tool_choice": "auto",
        **extension,
    }


def render_format(audio_format: AudioFormat, dialect: str) -> str | dict:
    if dialect == GA:
        rendered: dict[str, Any] = {"type": audio_format.ga_type}
        if audio_format.name == "pcm16":
            rendered["rate"] = audio_format.sample_rate_hz
        return rendered
    return audio_format.name


def _render_turn_detection(turn_detection: TurnDetection | None) -> dict | None:
    if turn_detection is None:
        return None
    return {
        "type": turn_detection.type,
        "threshold": turn_detection.threshold,
        "prefix_padding_ms": turn_detection.prefix_padding_ms,
        "silence_duration_ms": turn_detection.silence_duration_ms,
        "create_response": turn_detection.create_response,
        "interrupt_response": turn_detection.interrupt_response,
    }


def user_item(item_id: str, content: list[dict]) -> dict:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": content,
    }


def assistant_item(item_id: str, status: str, speaks: bool, transcript: str | None, dialect: str) -> dict:
    """An assistant message; ``transcript`` None: its content is still empty (in progress)."""
    content: list[dict] = []
    if transcript is not None:
        kind = ("audio" if speaks else "text") if dialect == BETA else ("output_audio" if speaks else "output_text")
        content.append({"type": kind, "transcript" if speaks else "text": transcript})
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def error_object(error: RealtimeError, client_event_id: str | None = None) -> dict:
    return {
        "type": error.type,
        "code": error.code,
        "message": error.message,
        "param": error.param,
        "event_id": client_event_id,
    }


@dataclass
class Response:
    """One response (an assistant reply) and the server events that tell it: ``opening`` when it starts, a delta
    per piece of text or audio, ``closing`` at the end, whatever ended it."""

    config: SessionConfig
    dialect: str
    previous_item_id: str | None
    id: str = field(default_factory=lambda: new_id("resp"))
    item_id: str = field(default_factory=lambda: new_id("item"))
    transcript: str = ""
    audio_bytes: int = 0  # of PCM16 at the output rate, to tell how much audio the client was sent
    done: bool = False
    resampler: Any = field(default=None, repr=False)  # for a voice that cannot give the output rate

    @property
    def audio_seconds(self) -> float:
        return self.audio_bytes / 2 / self.config.output_format.sample_rate_hz

    def _ids(self) -> dict:
        return {"response_id": self.id, "item_id": self.item_id, "output_index": 0, "content_index": 0}

    def _object(self, status: str, output: list[dict], **extra: Any) -> dict:
        response: dict[str, Any] = {
            "object": "realtime.response",
            "id": self.id,
            "status": status,
            "status_details": None,
            "output": output,
            "usage": None,
            "conversation_id": None,
            "max_output_tokens": self.config.max_output_tokens or "inf",
            "metadata": None,
        }
        if self.dialect == GA:
            response["output_modalities"] = ["audio"] if self.config.speaks else ["text"]
            response["audio"] = {
                "output": {"format": render_format(self.config.output_format, GA), "voice": self.config.voice}
            }
        else:
            response["modalities"] = list(self.config.modalities)
            response["voice"] = self.config.voice
            response["output_audio_format"] = self.config.output_format.name
            response["temperature"] = self.config.temperature if self.config.temperature is not None else 0.8
        response.update(extra)
        return response

    def _part(self, transcript: str) -> dict:
        return (
            {"type": "audio", "transcript": transcript} if self.config.speaks else {"type": "text", "text": transcript}
        )

    def opening(self) -> list[dict]:
        item = assistant_item(self.item_id, "in_progress", self.config.speaks, None, self.dialect)
        return [
            {"type": "response.created", "response": self._object("in_progress", [])},
            {"type": "response.output_item.added", "response_id": self.id, "output_index": 0, "item": item},
            {"type": "conversation.item.created", "previous_item_id": self.previous_item_id, "item": item},
            {"type": "response.content_part.added", **self._ids(), "part": self._part("")},
        ]

    def text_delta(self, delta: str) -> dict:
        self.transcript += delta
        kind = "response.audio_transcript.delta" if self.config.speaks else "response.text.delta"
        return {"type": kind, **self._ids(), "delta": delta}

    def audio_delta(self, encoded_base64: str, pcm_bytes: int) -> dict:
        self.audio_bytes += pcm_bytes
        return {"type": "response.audio.delta", **self._ids(), "delta": encoded_base64}

    def closing(
        self, status: str, reason: str | None = None, usage: dict | None = None, error: dict | None = None
    ) -> list[dict]:
        """The events that end the response: ``status`` completed, cancelled (``reason`` turn_detected or
        client_cancelled) or failed (``error``)."""
        self.done = True
        item_status = "completed" if status == "completed" else "incomplete"
        item = assistant_item(self.item_id, item_status, self.config.speaks, self.transcript, self.dialect)
        events: list[dict] = []
        if self.config.speaks:
            events.append({"type": "response.audio.done", **self._ids()})
            events.append({"type": "response.audio_transcript.done", **self._ids(), "transcript": self.transcript})
        else:
            events.append({"type": "response.text.done", **self._ids(), "text": self.transcript})
        events.append({"type": "response.content_part.done", **self._ids(), "part": self._part(self.transcript)})
        events.append({"type": "response.output_item.done", "response_id": self.id, "output_index": 0, "item": item})
        details = None
        if status != "completed":
            details = {"type": status, "reason": reason, "error": error}
        response = self._object(status, [item], status_details=details, usage=usage)
        events.append({"type": "response.done", "response": response})
        return events


def usage_of(prompt_tokens: int, completion_tokens: int) -> dict:
    """A response's ``usage`` from the chat stage's token counts (all text tokens: the chat model writes text and
    the TTS stage speaks it)."""
    return {
        "total_tokens": prompt_tokens + completion_tokens,
        "input_tokens": prompt_tokens,
        "output_tokens": completion_tokens,
        "input_token_details": {"text_tokens": prompt_tokens, "audio_tokens": 0, "cached_tokens": 0},
        "output_token_details": {"text_tokens": completion_tokens, "audio_tokens": 0},
    }
