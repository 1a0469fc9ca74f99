"""The HTTP service as OpenAI's own Python package sees it: the real ``python -m services.http`` process in front of
the real cluster (embedded models), speech in every format, transcription of a real recording (also streamed), a
streamed audio chat, models, voices, bad input and metrics. Voice cloning runs on a second cluster with the
synthetic engines, whose TTS clones voices (the embedded one cannot) and whose audio lengths are exact."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import httpx2 as httpx
import numpy as np
import openai
import pytest

from services.common import codecs
from tools.cluster import LocalCluster
from tools.speech_check import character_error_rate, speakable_reference

pytestmark = pytest.mark.integration

MANIFEST_TEXT = "那等我们到海洋馆之后，给妈妈买个礼物，好不好呀？"  # what Tingting_prompt.wav says
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
CONTENT_TYPES = {
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg; codecs=opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "mulaw": "audio/basic",
    "alaw": "audio/x-alaw-basic",
}
SPEECH_RATE = 24000  # HTTP_SPEECH_SAMPLE_RATE_HZ: raw pcm comes at this rate, as OpenAI's does
RAW_FORMATS = {"pcm": ("s16le", SPEECH_RATE), "mulaw": ("mulaw", 8000), "alaw": ("alaw", 8000)}


# --- helpers -----------------------------------------------------------------------------------------------------


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Mono float samples and their rate, decoded by PyAV (FFmpeg) on its own, not by the service's code."""
    if fmt in RAW_FORMATS:
        demuxer, rate = RAW_FORMATS[fmt]
        container = av.open(io.BytesIO(data), format=demuxer, options={"sample_rate": str(rate), "ch_layout": "mono"})
    else:
        container = av.open(io.BytesIO(data))
    with container:
        frames = [frame for frame in container.decode(audio=0)]
    rate = frames[0].sample_rate
    samples = np.concatenate([frame.to_ndarray().astype(np.float64).reshape(-1) for frame in frames])
    if np.issubdtype(frames[0].to_ndarray().dtype, np.integer):
        samples /= 32768.0
    return samples, rate


def seconds_and_loudness(data: bytes, fmt: str) -> tuple[float, float]:
    samples, rate = decode(data, fmt)
    return len(samples) / rate, float(np.sqrt(np.mean(samples**2)))


def wav_bytes_of(pcm16: bytes, rate: int) -> bytes:
    encoder = codecs.open_encoder("wav", rate)
    return encoder.encode(pcm16) + encoder.finish()


def recording_as(data: bytes, fmt: str) -> bytes:
    """The recording re-encoded (via the codecs module) to another container, to upload something other than WAV."""
    samples, rate = decode(data, "wav")
    encoder = codecs.open_encoder(fmt, rate)
    pcm = (samples * 32767).astype("<i2").tobytes()
    return encoder.encode(pcm) + encoder.finish()


def openai_client(cluster: LocalCluster) -> openai.AsyncOpenAI:
    # No retries: a status this test expects must not be retried into another one.
    return openai.AsyncOpenAI(base_url=cluster.http_url + "/v1", api_key="not-checked-yet", max_retries=0, timeout=180)


@pytest.fixture
async def client(cluster: LocalCluster) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client(cluster) as client:
        yield client


@pytest.fixture
async def http(cluster: LocalCluster) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=cluster.http_url, timeout=180) as http:
        yield http


async def speech(client: openai.AsyncOpenAI, text: str, fmt: str, **options: object) -> tuple[bytes, str]:
    async with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        input=text,
        response_format=fmt,
        **options,  # type: ignore[arg-type]
    ) as response:
        return await response.read(), response.headers["content-type"]


async def transcribe(client: openai.AsyncOpenAI, data: bytes, name: str = "clip.wav") -> str:
    result = await client.audio.transcriptions.create(model="whisper-1", file=(name, data))
    return result.text


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    assert error["param"] == param, error
    return error


def metric_lines(url: str) -> list[str]:
    return urllib.request.urlopen(url, timeout=10).read().decode().splitlines()


def metric_value(url: str, name: str, labels: str) -> float:
    prefix = f"{name}{{{labels}}} "
    return sum(float(line.split()[-1]) for line in metric_lines(url) if line.startswith(prefix))


# --- speech ------------------------------------------------------------------------------------------------------


async def test_speech_in_every_format_decodes_back_to_the_length_of_the_pcm(client: openai.AsyncOpenAI) -> None:
    pcm, _ = await speech(client, SENTENCE, "pcm", voice="alloy")
    reference = len(pcm) / 2 / SPEECH_RATE
    assert 2.0 < reference < 8.0, reference
    for fmt in codecs.OUTPUT_FORMATS:
        data, content_type = await speech(client, SENTENCE, fmt, voice="alloy")
        assert content_type == CONTENT_TYPES[fmt]
        seconds, loudness = seconds_and_loudness(data, fmt)
        # Piper's timing varies a little between runs, and MP3/AAC add an encoder delay of a frame or two.
        assert seconds == pytest.approx(reference, abs=0.15 + 0.05 * reference), fmt
        assert loudness > 0.01, fmt
        if fmt == "mp3":  # speech, not just sound: transcribed back (as plain text, OpenAI's "text" format)
            heard = await client.audio.transcriptions.create(
                model="whisper-1", file=("speech.mp3", data), response_format="text"
            )
            assert isinstance(heard, str) and character_error_rate(SENTENCE, heard) < 0.3, heard


async def test_speech_picks_a_voice_for_the_language_honours_speed_and_streams(client: openai.AsyncOpenAI) -> None:
    chinese = "今天天气很好，我们去公园散步吧。"
    data, _ = await speech(client, chinese, "wav", voice="alloy")  # an OpenAI name: the cluster picks a zh voice
    assert character_error_rate(chinese, await transcribe(client, data)) < 0.3

    normal, _ = await speech(client, SENTENCE, "pcm", voice="en-joe")
    fast, _ = await speech(client, SENTENCE, "pcm", voice="en-joe", speed=1.5)
    assert len(fast) / len(normal) == pytest.approx(1 / 1.5, rel=0.15)

    long_text = " ".join(["This sentence is one of several that make a long input for the speech endpoint."] * 8)
    started = time.perf_counter()
    first_piece_at = None
    async with client.audio.speech.with_streaming_response.create(
        model="tts-1", input=long_text, voice="en-joe", response_format="mp3"
    ) as response:
        async for _ in response.iter_bytes():
            first_piece_at = first_piece_at or time.perf_counter() - started
    total = time.perf_counter() - started
    assert first_piece_at is not None and first_piece_at < total / 2, (first_piece_at, total)


async def test_speech_as_server_sent_events(http: httpx.AsyncClient) -> None:
    body = {"model": "tts-1", "input": SENTENCE, "voice": "en-joe", "response_format": "pcm", "stream_format": "sse"}
    response = await http.post("/v1/audio/speech", json=body)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: ") :]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert [event["type"] for event in events][-1] == "speech.audio.done"
    pcm = b"".join(base64.b64decode(event["audio"]) for event in events if event["type"] == "speech.audio.delta")
    assert 2.0 < len(pcm) / 2 / SPEECH_RATE < 8.0


async def test_a_client_that_leaves_mid_speech_stops_the_synthesis(cluster: LocalCluster) -> None:
    async def synthesizing() -> float:
        url = cluster.services["gateway"].metrics_url
        return await asyncio.to_thread(metric_value, url, "stepaudio_rpc_inflight", 'method="Synthesize"')

    long_text = " ".join(["A long text keeps the voice busy for a good while after the client has gone."] * 40)
    async with httpx.AsyncClient(base_url=cluster.http_url, timeout=60) as http:
        body = {"model": "tts-1", "input": long_text, "voice": "en-joe", "response_format": "pcm"}
        async with http.stream("POST", "/v1/audio/speech", json=body) as response:
            assert response.status_code == 200
            async for _ in response.aiter_bytes():
                assert await synthesizing() == 1
                break
    deadline = time.monotonic() + 10  # synthesising all of it would take far longer
    while (inflight := await synthesizing()) > 0:
        assert time.monotonic() < deadline, f"the gateway still synthesises for a client that left ({inflight})"
        await asyncio.sleep(0.1)


# --- transcription -----------------------------------------------------------------------------------------------


async def test_transcribe_a_real_recording(client: openai.AsyncOpenAI, shared_data: Path) -> None:
    wav = (shared_data / "Tingting_prompt.wav").read_bytes()
    plain = await client.audio.transcriptions.create(model="whisper-1", file=("question.wav", wav))
    assert character_error_rate(MANIFEST_TEXT, plain.text) < 0.25, plain.text

    verbose = await client.audio.transcriptions.create(
        model="whisper-1", file=("question.wav", wav), response_format="verbose_json", language="zh"
    )
    assert verbose.language == "zh" and verbose.duration == pytest.approx(4.4, abs=0.1)
    assert [segment.text for segment in verbose.segments] == [verbose.text]
    assert verbose.segments[0].end == pytest.approx(4.4, abs=0.1)

    srt = await client.audio.transcriptions.create(model="whisper-1", file=("question.wav", wav), response_format="srt")
    assert re.match(r"1\n00:00:00,000 --> 00:00:04,\d{3}\n.+\n", srt), srt
    vtt = await client.audio.transcriptions.create(model="whisper-1", file=("question.wav", wav), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:04."), vtt


async def test_transcribe_streamed_from_another_container(client: openai.AsyncOpenAI, shared_data: Path) -> None:
    ogg = recording_as((shared_data / "Tingting_prompt.wav").read_bytes(), "opus")
    stream = await client.audio.transcriptions.create(model="whisper-1", file=("question.ogg", ogg), stream=True)
    events = [event async for event in stream]
    assert events and {event.type for event in events[:-1]} == {"transcript.text.delta"}
    assert events[-1].type == "transcript.text.done"
    assert "".join(event.delta for event in events[:-1]) == events[-1].text
    assert character_error_rate(MANIFEST_TEXT, events[-1].text) < 0.25, events[-1].text


# --- chat --------------------------------------------------------------------------------------------------------


async def test_stream_an_audio_chat_completion(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="step-audio-chat",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[
            {"role": "system", "content": "Answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
        seed=1,
        max_tokens=48,
    )
    transcript, audio, audio_ids, expires_at, finish_reason, usage = "", bytearray(), set(), 0, None, None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish_reason = choice.finish_reason or finish_reason
            delta = choice.delta
            assert not delta.content, "with audio, the reply text comes as audio.transcript (as OpenAI sends it)"
            if delta.audio is not None:
                audio_ids.add(delta.audio.id)
                transcript += delta.audio.transcript or ""
                audio += base64.b64decode(delta.audio.data or "")
                expires_at = delta.audio.expires_at or expires_at
    assert "Paris" in transcript, transcript
    assert len(audio_ids) == 1 and expires_at > time.time()
    assert finish_reason == "stop" and usage is not None and usage.completion_tokens > 0
    seconds, loudness = seconds_and_loudness(bytes(audio), "wav")
    assert seconds > 0.5 and loudness > 0.01
    heard = await transcribe(client, bytes(audio))
    assert character_error_rate(speakable_reference(transcript), heard) < 0.4, (transcript, heard)


async def test_a_spoken_question_gets_a_spoken_answer(client: openai.AsyncOpenAI, shared_data: Path) -> None:
    wav = (shared_data / "Tingting_prompt.wav").read_bytes()
    completion = await client.chat.completions.create(
        model="step-audio-chat",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "mp3"},
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}
                ],
            }
        ],
        temperature=0,
        seed=1,
        max_tokens=48,
    )
    message = completion.choices[0].message
    assert message.content is None and message.audio is not None
    assert re.search(r"[\u4e00-\u9fff]", message.audio.transcript), message.audio.transcript  # a Chinese reply
    seconds, loudness = seconds_and_loudness(base64.b64decode(message.audio.data), "mp3")
    assert seconds > 0.5 and loudness > 0.01
    assert completion.usage.prompt_tokens > 0


async def test_a_text_chat_carries_earlier_messages(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="step-audio-chat",
        messages=[
            {"role": "system", "content": "Answer in a few words."},
            {"role": "user", "content": "My name is Zephyrine. Please remember it."},
            {"role": "assistant", "content": "Nice to meet you, Zephyrine."},
            {"role": "user", "content": "What is my name?"},
        ],
        temperature=0,
        seed=1,
        max_tokens=24,
    )
    assert "Zephyrine" in completion.choices[0].message.content, completion.choices[0].message.content
    assert completion.object == "chat.completion" and completion.choices[0].message.audio is None


async def test_models_list(client: openai.AsyncOpenAI) -> None:
    ids = [model.id async for model in client.models.list()]
    assert ids == ["step-audio-chat", "step-audio-tts", "step-audio-asr"]


# --- voices ------------------------------------------------------------------------------------------------------


async def test_voices_are_listed_and_the_embedded_tts_refuses_to_clone(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient, shared_data: Path
) -> None:
    listing = (await http.get("/v1/voices")).json()
    voices = {voice["id"]: voice for voice in listing["data"]}
    assert {"en-joe", "zh-baker"} <= set(voices) and voices["en-joe"]["languages"] == ["en-US"]
    assert listing["aliases"]["alloy"] == ""
    assert [voice["id"] for voice in (await http.get("/v1/voices", params={"language": "zh"})).json()["data"]] == [
        "zh-baker"
    ]
    with pytest.raises(openai.BadRequestError, match="cannot clone voices"):
        await client.audio.voices.create(
            audio_sample=("me.wav", (shared_data / "Tingting_prompt.wav").read_bytes()), name="Me", consent="mine"
        )


@pytest.fixture(scope="module")
def synthetic_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The four services with the synthetic engines (a TTS that clones voices, exact audio lengths) and http."""
    run_dir = tmp_path_factory.mktemp("http-synthetic")
    env = {
        "TOKENIZER_ENGINE": "synthetic",
        "CHAT_ENGINE": "synthetic",
        "TTS_ENGINE": "synthetic",
        "TTS_REGISTRY_DIR": str(run_dir / "voices"),
        "GATEWAY_VOICE_EN": "synthetic-en",
        "GATEWAY_VOICE_ZH": "synthetic-zh",
    }
    cluster = LocalCluster(run_dir, env=env, with_http=True)
    cluster.start(timeout=120)
    yield cluster
    assert cluster.stop() == {"tokenizer": 0, "chat": 0, "tts": 0, "gateway": 0, "http": 0}


def synthetic_seconds(text: str, speed: float = 1.0) -> float:
    """The synthetic TTS speaks 65 ms per letter or digit (docs/synthetic.md)."""
    return max(0.2, 0.065 * sum(character.isalnum() for character in text)) / speed


async def test_clone_a_voice_speak_with_it_and_delete_it(synthetic_cluster: LocalCluster, shared_data: Path) -> None:
    wav = (shared_data / "Tingting_prompt.wav").read_bytes()
    text = "Hello from a cloned voice"
    async with openai_client(synthetic_cluster) as client:
        voice = await client.audio.voices.create(audio_sample=("tingting.wav", wav), name="Tingting", consent="ok")
        assert voice.object == "audio.voice" and voice.name == "Tingting" and voice.id.startswith("voice_")
        for fmt in ("pcm", "mp3", "opus", "mulaw"):
            data, _ = await speech(client, text, fmt, voice={"id": voice.id})
            seconds, _ = seconds_and_loudness(data, fmt)
            assert seconds == pytest.approx(synthetic_seconds(text), abs=0.08), fmt
        async with httpx.AsyncClient(base_url=synthetic_cluster.http_url, timeout=60) as http:
            listed = {entry["id"]: entry for entry in (await http.get("/v1/voices")).json()["data"]}
            assert listed[voice.id]["cloned"] and listed[voice.id]["name"] == "Tingting"
            own = await http.post(
                "/v1/voices",
                data={"id": "tingting-2", "name": "Tingting 2", "language": "zh", "transcript": MANIFEST_TEXT},
                files={"file": ("t.ogg", recording_as(wav, "opus"), "audio/ogg")},
            )
            assert own.status_code == 200, own.text
            assert own.json()["id"] == "tingting-2" and own.json()["languages"] == ["zh"]
            assert_openai_error(
                await http.post("/v1/voices", data={"id": "tingting-2", "transcript": "x"}, files={"file": wav}), 409
            )
            assert (await http.delete("/v1/voices/tingting-2")).json() == {
                "id": "tingting-2",
                "object": "voice.deleted",
                "deleted": True,
            }
        deleted = await client.audio.voices.delete(voice.id)
        assert deleted.deleted and deleted.id == voice.id
        with pytest.raises(openai.NotFoundError) as caught:
            await client.audio.speech.create(model="tts-1", input=text, voice={"id": voice.id})
        assert caught.value.body["param"] == "voice"
        with pytest.raises(openai.NotFoundError):
            await client.audio.voices.delete(voice.id)


async def test_speech_lengths_are_exact_with_the_synthetic_voice(synthetic_cluster: LocalCluster) -> None:
    text = "Exact lengths in every format"
    async with openai_client(synthetic_cluster) as client:
        for fmt in codecs.OUTPUT_FORMATS:
            data, _ = await speech(client, text, fmt, voice="synthetic-en", speed=1.25)
            seconds, _ = seconds_and_loudness(data, fmt)
            # MP3 and AAC carry the encoder's priming delay (about a frame) on top.
            assert seconds == pytest.approx(synthetic_seconds(text, 1.25), abs=0.08), fmt


# --- bad input ---------------------------------------------------------------------------------------------------


async def test_bad_input_gets_openai_errors_and_the_service_stays_ready(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient, shared_data: Path, cluster: LocalCluster
) -> None:
    speech_body = {"model": "tts-1", "input": "Hello.", "voice": "en-joe"}
    # Wrong content types.
    error = assert_openai_error(
        await http.post("/v1/audio/speech", content=b"Hello.", headers={"content-type": "text/plain"}), 415
    )
    assert "application/json" in error["message"]
    error = assert_openai_error(await http.post("/v1/audio/transcriptions", json={"file": "question.wav"}), 415)
    assert "multipart/form-data" in error["message"]
    # Malformed JSON, and JSON that is not the request.
    error = assert_openai_error(
        await http.post("/v1/audio/speech", content=b'{"input": "Hel', headers={"content-type": "application/json"}),
        400,
    )
    assert error["code"] == "invalid_json"
    assert_openai_error(await http.post("/v1/chat/completions", json={"model": "x", "messages": "hi"}), 400, "messages")
    # Empty input, bad speed, unknown format, unknown voice: through OpenAI's package, as its users see them.
    with pytest.raises(openai.BadRequestError) as caught:
        await client.audio.speech.create(model="tts-1", input="   ", voice="alloy")
    assert caught.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError, match=r"0\.5 to 2") as caught:
        await client.audio.speech.create(model="tts-1", input="Hello.", voice="alloy", speed=4.0)
    assert caught.value.body["param"] == "speed"
    with pytest.raises(openai.BadRequestError, match="mulaw"):
        await client.audio.speech.create(model="tts-1", input="Hello.", voice="alloy", response_format="ogg")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError, match="unknown voice 'nobody'") as caught:
        await client.audio.speech.create(model="tts-1", input="Hello.", voice="nobody")
    assert caught.value.body["type"] == "not_found_error" and caught.value.body["param"] == "voice"
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "Hi"}], modalities=["text", "audio"],
            audio={"voice": "nobody", "format": "wav"},
        )  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="last message must be the user's"):
        await client.chat.completions.create(model="x", messages=[{"role": "assistant", "content": "Hi"}])
    # Uploads: not audio, empty, oversized (declared, and streamed without a length).
    with pytest.raises(openai.BadRequestError, match="not audio") as caught:
        await client.audio.transcriptions.create(
            model="whisper-1", file=("notes.wav", b"these are not audio bytes" * 40)
        )
    assert caught.value.body["param"] == "file" and caught.value.body["code"] == "unsupported_audio"
    assert_openai_error(await http.post("/v1/audio/transcriptions", files={"file": ("e.wav", b"")}), 400, "file")
    oversized = (shared_data / "Tingting_prompt.wav").read_bytes() * 70  # > 25 MiB
    with pytest.raises(openai.APIStatusError) as caught:
        await client.audio.transcriptions.create(model="whisper-1", file=("long.wav", oversized))
    assert caught.value.status_code == 413 and "HTTP_MAX_UPLOAD_BYTES" in caught.value.body["message"]

    async def chunked() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        for _ in range(30):
            yield bytes(1024 * 1024)

    response = await http.post(
        "/v1/audio/transcriptions", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert_openai_error(response, 413)
    # Unknown routes and methods keep the shape too.
    assert_openai_error(await http.get("/v1/nothing-here"), 404)
    assert_openai_error(await http.get("/v1/audio/speech"), 405)

    assert (await http.get("/readyz")).status_code == 200
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    data, _ = await speech(client, speech_body["input"], "wav", voice="en-joe")
    assert seconds_and_loudness(data, "wav")[0] > 0.3
    for service in cluster.services.values():
        assert service.process.poll() is None, f"{service.name} exited"


def test_request_metrics_by_route_and_status(cluster: LocalCluster) -> None:
    """Runs after the tests above in this module (file order): their requests are counted."""
    lines = metric_lines(cluster.http_url + "/metrics")
    counted = {line.split()[0] for line in lines if line.startswith("stepaudio_http_requests_total{")}
    assert 'stepaudio_http_requests_total{method="POST",route="/v1/audio/speech",status="200"}' in counted
    assert 'stepaudio_http_requests_total{method="POST",route="/v1/audio/speech",status="404"}' in counted
    assert 'stepaudio_http_requests_total{method="POST",route="/v1/audio/transcriptions",status="413"}' in counted
    assert any(
        line.startswith('stepaudio_http_request_duration_seconds_count{method="POST",route="/v1/chat/completions"')
        for line in lines
    )
