"""``stepaudio``: command-line client of the gateway.

stepaudio chat --text "你好" --out reply.wav
stepaudio chat --audio question.wav --session <id> --out reply.wav
stepaudio tts "Hello there" --voice en-joe --out hello.wav
stepaudio transcribe recording.wav
stepaudio voices
stepaudio voices register yuqian --wav prompt.wav --text "叫做秋风起蟹脚痒……"
stepaudio voices delete yuqian
stepaudio session create | get ID | delete ID
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import wave
from pathlib import Path

import grpc
from stepaudio.common.v1 import audio_pb2, speech_pb2
from stepaudio.gateway.v1 import gateway_pb2

from stepaudio_client.client import DEFAULT_ADDRESS, GatewayClient, wav_audio


def write_wav(path: Path, pcm: bytes, sample_rate_hz: int) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate_hz)
        out.writeframes(pcm)


def _controls(args: argparse.Namespace) -> speech_pb2.VoiceControls:
    return speech_pb2.VoiceControls(speed=args.speed, volume=args.volume, pitch=args.pitch)


def heard(transcript: speech_pb2.Transcript) -> str:
    """The user's transcript, with how they sounded when an engine could tell."""
    detected = transcript.emotion
    if not detected.emotion:
        return transcript.text
    name = speech_pb2.SpeakerEmotion.Name(detected.emotion).removeprefix("SPEAKER_EMOTION_").lower()
    score = f" {detected.confidence:.2f}" if detected.HasField("confidence") else ""
    return f"{transcript.text}  [{name}{score}, {detected.engine}]"


def _reply_mode(args: argparse.Namespace) -> int:
    return gateway_pb2.REPLY_MODE_EMPATHETIC if args.empathetic else gateway_pb2.REPLY_MODE_UNSPECIFIED


class _Progress:
    """Audio received so far, on one stderr line (only when stderr is a terminal)."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.started = time.perf_counter()

    def update(self, seconds: float) -> None:
        if self.enabled:
            sys.stderr.write(f"\r[{time.perf_counter() - self.started:5.1f} s] audio received: {seconds:5.1f} s")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


async def cmd_chat(client: GatewayClient, args: argparse.Namespace) -> int:
    audio = wav_audio(await asyncio.to_thread(Path(args.audio).read_bytes)) if args.audio else None
    call = client.chat_stream(
        args.text or "",
        audio,
        session_id=args.session or "",
        voice_id=args.voice or "",
        controls=_controls(args),
        text_only=args.text_only,
        reply_mode=_reply_mode(args),
        timeout=args.timeout,
    )
    pcm = bytearray()
    rate = 0
    progress = _Progress()
    if not args.audio:
        print("assistant: ", end="", flush=True)
    async for event in call:
        kind = event.WhichOneof("event")
        if kind == "user_transcript":
            print(f"you: {heard(event.user_transcript)}")
            print("assistant: ", end="", flush=True)
        elif kind == "reply_text_delta":
            print(event.reply_text_delta, end="", flush=True)
        elif kind == "audio":
            pcm += event.audio.content
            rate = event.audio.format.sample_rate_hz
            progress.update(len(pcm) / 2 / rate)
        elif kind == "summary":
            progress.done()
            summary = event.summary
            latency = summary.latency
            print()
            print(
                f"[first text {latency.first_text_seconds:.2f} s, first audio {latency.first_audio_seconds:.2f} s, "
                f"total {latency.total_seconds:.2f} s, {summary.audio_seconds:.1f} s of audio, "
                f"request {summary.request_id}]",
                file=sys.stderr,
            )
    if pcm and args.out:
        write_wav(Path(args.out), bytes(pcm), rate)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


async def cmd_converse(client: GatewayClient, args: argparse.Namespace) -> int:
    """Stream each WAV file like a microphone (real-time pace, then silence); print the events."""
    clips = []
    for name in args.files:
        with wave.open(name, "rb") as clip:
            if clip.getsampwidth() != 2:
                print(f"error: {name} is not 16-bit PCM", file=sys.stderr)
                return 2
            clips.append((clip.readframes(clip.getnframes()), clip.getframerate(), clip.getnchannels()))
    if len({(rate, channels) for _, rate, channels in clips}) != 1:
        print("error: the files must share one sample rate and channel count", file=sys.stderr)
        return 2
    rate, channels = clips[0][1], clips[0][2]
    requests: asyncio.Queue[gateway_pb2.StreamingChatRequest | None] = asyncio.Queue()
    await requests.put(
        gateway_pb2.StreamingChatRequest(
            config=gateway_pb2.StreamingChatConfig(
                input_format=audio_pb2.AudioFormat(
                    encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=rate, channels=channels
                ),
                session_id=args.session or "",
                voice_id=args.voice or "",
                reply_mode=_reply_mode(args),
            )
        )
    )
    turn_done = asyncio.Event()

    async def speak() -> None:
        piece = int(rate * 0.02) * 2 * channels
        for pcm, _, _ in clips:
            turn_done.clear()
            for start in range(0, len(pcm) + int(rate * 1.2) * 2 * channels, piece):
                chunk = pcm[start : start + piece] or bytes(piece)
                await requests.put(gateway_pb2.StreamingChatRequest(audio_content=chunk))
                await asyncio.sleep(0.02)
            await turn_done.wait()
        await requests.put(None)

    async def request_stream():
        while (request := await requests.get()) is not None:
            yield request

    speaker = asyncio.create_task(speak())
    replies = 0
    pcm = bytearray()
    async for event in client.stub.StreamingChat(request_stream(), timeout=args.timeout):
        kind = event.WhichOneof("event")
        if kind == "user_transcript":
            print(f"you: {heard(event.user_transcript)}\nassistant: ", end="", flush=True)
        elif kind == "reply_text_delta":
            print(event.reply_text_delta, end="", flush=True)
        elif kind == "audio":
            pcm += event.audio.content
            reply_rate = event.audio.format.sample_rate_hz
        elif kind in ("summary", "interrupted"):
            print(" [interrupted]" if kind == "interrupted" else "")
            replies += 1
            if pcm and args.out:
                write_wav(Path(f"{args.out}-{replies}.wav"), bytes(pcm), reply_rate)
                print(f"wrote {args.out}-{replies}.wav", file=sys.stderr)
            pcm = bytearray()
            turn_done.set()
    await speaker
    return 0


async def cmd_tts(client: GatewayClient, args: argparse.Namespace) -> int:
    pcm = bytearray()
    rate = 0
    progress = _Progress()
    async for chunk in client.synthesize(args.text, args.voice or "", _controls(args), args.sample_rate, args.timeout):
        pcm += chunk.content
        rate = chunk.format.sample_rate_hz
        progress.update(len(pcm) / 2 / rate)
    progress.done()
    write_wav(Path(args.out), bytes(pcm), rate)
    print(f"wrote {args.out} ({len(pcm) / 2 / rate:.1f} s at {rate} Hz)", file=sys.stderr)
    return 0


async def cmd_transcribe(client: GatewayClient, args: argparse.Namespace) -> int:
    content = await asyncio.to_thread(Path(args.file).read_bytes)
    response = await client.transcribe(wav_audio(content), args.language or "", args.timeout)
    print(response.transcript.text)
    return 0


async def cmd_voices(client: GatewayClient, args: argparse.Namespace) -> int:
    if args.action == "register":
        content = await asyncio.to_thread(Path(args.wav).read_bytes)
        response = await client.register_voice(
            args.name,
            wav_audio(content),
            args.text,
            display_name=args.display_name or "",
            language_codes=[code for code in (args.languages or "").split(",") if code],
            timeout=args.timeout,
        )
        print(f"registered {response.voice.voice_id} ({response.prompt_token_count} prompt tokens)")
        return 0
    if args.action == "delete":
        await client.delete_voice(args.name, args.timeout)
        print(f"deleted {args.name}")
        return 0
    for voice in await client.list_voices(args.language or "", args.timeout):
        print(
            f"{voice.voice_id:<14} {','.join(voice.language_codes):<10} {voice.native_sample_rate_hz} Hz  "
            f"{voice.display_name}{'  (cloned)' if voice.cloned else ''}  "
            f"controls: {','.join(voice.supported_controls) or '-'}"
        )
    return 0


async def cmd_session(client: GatewayClient, args: argparse.Namespace) -> int:
    if args.action == "create":
        session = await client.create_session(args.system_prompt or "", args.voice or "")
        print(session.session_id)
    elif args.action == "get":
        session = await client.get_session(args.id)
        for entry in session.history:
            speaker = "you" if entry.speaker == 1 else "assistant"
            print(f"{speaker}: {entry.text}")
    else:
        await client.delete_session(args.id)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="stepaudio", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    root.add_argument(
        "--address", default=os.environ.get("STEPAUDIO_ADDRESS", DEFAULT_ADDRESS), help="gateway host:port"
    )
    root.add_argument("--timeout", type=float, default=None, help="deadline of the call, in seconds")
    commands = root.add_subparsers(dest="command", required=True)

    chat = commands.add_parser("chat", help="one conversational turn (text or WAV in; text and WAV out)")
    source = chat.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the question as text")
    source.add_argument("--audio", help="the question as a WAV file")
    chat.add_argument("--session", help="session id (from `stepaudio session create`)")
    chat.add_argument("--out", help="write the spoken reply to this WAV file")
    chat.add_argument("--text-only", action="store_true", help="no speech, text reply only")
    chat.add_argument(
        "--empathetic", action="store_true", help="let the user's detected emotion choose the reply's emotion"
    )
    chat.set_defaults(run=cmd_chat)

    tts = commands.add_parser("tts", help="synthesise text to a WAV file")
    tts.add_argument("text")
    tts.add_argument("--out", required=True)
    tts.add_argument("--sample-rate", type=int, default=0, help="output rate in Hz (default: the voice's)")
    tts.set_defaults(run=cmd_tts)

    for command in (chat, tts):
        command.add_argument("--voice", help="voice id (see `stepaudio voices`)")
        command.add_argument("--speed", type=float, default=0.0, help="0.5..2.0 (default 1.0)")
        command.add_argument("--volume", type=float, default=0.0, help="0.1..2.0 (default 1.0)")
        command.add_argument("--pitch", type=float, default=0.0, help="semitones, -4..4 (default 0: unchanged)")

    converse = commands.add_parser("converse", help="a real-time voice conversation from WAV files (StreamingChat)")
    converse.add_argument("files", nargs="+", help="16-bit WAV files, one utterance each, streamed in real time")
    converse.add_argument("--session", help="session id")
    converse.add_argument("--voice", help="voice id")
    converse.add_argument("--out", help="write each reply to OUT-N.wav")
    converse.add_argument(
        "--empathetic", action="store_true", help="let the user's detected emotion choose each reply's emotion"
    )
    converse.set_defaults(run=cmd_converse)

    transcribe = commands.add_parser("transcribe", help="transcribe a WAV file")
    transcribe.add_argument("file")
    transcribe.add_argument("--language", help="language hint: zh, en, ...")
    transcribe.set_defaults(run=cmd_transcribe)

    voices = commands.add_parser("voices", help="list voices; register or delete cloned voices")
    voices.add_argument("--language", help="filter the list by language prefix")
    voices.set_defaults(run=cmd_voices, action="list")
    voice_actions = voices.add_subparsers(dest="action")
    register = voice_actions.add_parser("register", help="clone a voice from a 3-30 s WAV of one speaker")
    register.add_argument("name", help="id of the new voice (letters, digits, '_', '-')")
    register.add_argument("--wav", required=True, help="the prompt recording (16-48 kHz WAV)")
    register.add_argument("--text", required=True, help="exact transcript of the recording")
    register.add_argument("--display-name", help="human-readable name (default: the id)")
    register.add_argument("--languages", help="comma-separated BCP-47 codes the voice speaks, e.g. zh,en")
    delete = voice_actions.add_parser("delete", help="delete a cloned voice")
    delete.add_argument("name", help="id of the cloned voice")

    session = commands.add_parser("session", help="manage conversation sessions")
    session.add_argument("action", choices=["create", "get", "delete"])
    session.add_argument("id", nargs="?", help="session id (get, delete)")
    session.add_argument("--system-prompt")
    session.add_argument("--voice")
    session.set_defaults(run=cmd_session)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "session" and args.action != "create" and not args.id:
        parser().error("session get/delete need an id")

    async def run() -> int:
        async with GatewayClient(args.address) as client:
            return await args.run(client, args)

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
