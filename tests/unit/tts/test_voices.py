"""The voice registry: built-in voices, cloning with validation, crash safety, restart."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from services.tts import voices as voices_module
from services.tts.voices import AlreadyExists, VoicePrompt, VoiceRegistry
from tests.unit.tokenizer.conftest import tiny_models_dir  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[3]
TOKENS = tuple(65536 + n for n in (1, 2, 1024 + 3, 1024 + 4, 1024 + 5))


def prompt_wav(seconds: float = 4.0, rate: int = 24000, level: float = 0.3, subtype: str = "PCM_16") -> bytes:
    """A speech-like test prompt: harmonics with a syllable-rate envelope."""
    t = np.arange(int(seconds * rate)) / rate
    voiced = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 6)) / 2.3
    samples = (level * voiced * np.abs(np.sin(2 * np.pi * 2.5 * t))).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def builtin_dir(tmp_path: Path) -> Path:
    """A minimal voices directory in the tools.build_voices format."""
    directory = tmp_path / "voices"
    directory.mkdir(parents=True)
    for name in ("a.wav", "a-rap.wav"):
        (directory / name).write_bytes(prompt_wav())
    entry = {"display_name": "A", "language_codes": ["zh"], "prompt_text": "你好", "wav": "a.wav"}
    manifest = {
        "version": 1,
        "voices": {
            "Tingting": {
                **entry,
                "prompt_tokens": list(TOKENS),
                "music": {"rap": {**entry, "prompt_text": "（RAP）哟", "wav": "a-rap.wav", "prompt_tokens": []}},
            }
        },
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False))
    return directory


def register(registry: VoiceRegistry, voice_id: str = "alice", **overrides) -> VoicePrompt:
    arguments = {
        "voice_id": voice_id,
        "display_name": "Alice",
        "wav": prompt_wav(),
        "transcript": "今天天气真好，我们去公园散步吧。",
        "prompt_tokens": TOKENS,
        "language_codes": ("zh",),
    } | overrides
    return registry.register(**arguments)


def test_builtin_voices_with_music_variants(tmp_path: Path) -> None:
    registry = VoiceRegistry.open(builtin_dir(tmp_path), tmp_path / "registry")
    tingting = registry.get("Tingting")
    assert tingting.builtin and tingting.prompt_tokens == TOKENS and tingting.prompt_text == "你好"
    assert tingting.prompt_wav == tmp_path / "voices" / "a.wav" and tingting.language_codes == ("zh",)
    assert set(tingting.music) == {"rap"} and tingting.music["rap"].prompt_text == "（RAP）哟"
    assert [voice.voice_id for voice in registry.list()] == ["Tingting"]
    with pytest.raises(FailedPrecondition, match="built in"):
        registry.delete("Tingting")
    with pytest.raises(NotFound, match="available voices: Tingting"):
        registry.get("nobody")


def test_register_list_delete_and_survive_restart(tmp_path: Path) -> None:
    registry = VoiceRegistry.open(builtin_dir(tmp_path), tmp_path / "registry")
    alice = register(registry)
    assert not alice.builtin and alice.prompt_tokens == TOKENS and alice.display_name == "Alice"
    assert alice.prompt_text == "今天天气真好，我们去公园散步吧。" and alice.music == {}
    samples, rate = sf.read(alice.prompt_wav)
    assert rate == 24000 and len(samples) == 4 * 24000
    register(registry, "bob", prompt_tokens=(), display_name="")
    assert [voice.voice_id for voice in registry.list()] == ["Tingting", "alice", "bob"]

    reopened = VoiceRegistry.open(builtin_dir(tmp_path / "again"), tmp_path / "registry")
    assert reopened.get("alice") == alice
    assert reopened.get("bob").display_name == "bob" and reopened.get("bob").prompt_tokens == ()
    reopened.delete("alice")
    assert not alice.prompt_wav.exists()
    with pytest.raises(NotFound):
        reopened.delete("alice")
    assert [voice.voice_id for voice in VoiceRegistry.open(None, tmp_path / "registry").list()] == ["bob"]


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"voice_id": "Tingting"}, AlreadyExists, "built-in"),
        ({"voice_id": "ALICE"}, AlreadyExists, "cloned voice"),
        ({"voice_id": ""}, InvalidArgument, "not valid"),
        ({"voice_id": "a/b"}, InvalidArgument, "not valid"),
        ({"voice_id": "-x"}, InvalidArgument, "not valid"),
        ({"voice_id": "x" * 65}, InvalidArgument, "not valid"),
        ({"wav": prompt_wav(1.0)}, InvalidArgument, "1.0 s long; voice cloning needs 3-30 s"),
        ({"wav": prompt_wav(31.0, rate=16000)}, InvalidArgument, "the limit is 30 s"),
        ({"wav": prompt_wav(rate=8000)}, InvalidArgument, "at least 16000 Hz"),
        ({"wav": prompt_wav(level=0.0)}, InvalidArgument, "silent"),
        ({"wav": prompt_wav(level=0.002)}, InvalidArgument, "silent"),
        ({"wav": b"RIFF not really a wav"}, InvalidArgument, "not a readable"),
        ({"wav": b""}, InvalidArgument, "empty"),
        ({"transcript": "  "}, InvalidArgument, "transcript is missing"),
        ({"transcript": "字" * 501}, InvalidArgument, "limit is 500"),
        ({"prompt_tokens": (5,)}, InvalidArgument, "not a Step-Audio audio token"),
        ({"language_codes": ("chinese!",)}, InvalidArgument, "BCP-47"),
    ],
)
def test_register_rejects_bad_input_and_keeps_the_registry(tmp_path: Path, overrides, error, message) -> None:
    registry = VoiceRegistry.open(builtin_dir(tmp_path), tmp_path / "registry")
    register(registry)
    with pytest.raises(error, match=message) as raised:
        register(registry, **{"voice_id": "carol", **overrides})
    if error is AlreadyExists:
        assert raised.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert [voice.voice_id for voice in registry.list()] == ["Tingting", "alice"]
    assert sorted(path.name for path in (tmp_path / "registry" / "wavs").iterdir()) == [
        registry.get("alice").prompt_wav.name
    ]


def test_accepts_24_bit_stereo_48k_prompt(tmp_path: Path) -> None:
    registry = VoiceRegistry.open(None, tmp_path / "registry")
    voice = register(registry, wav=prompt_wav(rate=48000, subtype="PCM_24"))
    assert sf.info(voice.prompt_wav).samplerate == 48000


def wav_files(tmp_path: Path) -> int:
    return len(list((tmp_path / "registry" / "wavs").iterdir()))


def test_cloned_voices_are_bounded_by_count(tmp_path: Path) -> None:
    registry = VoiceRegistry.open(builtin_dir(tmp_path), tmp_path / "registry", max_voices=2)
    register(registry, "alice")
    register(registry, "bob")
    with pytest.raises(ResourceExhausted, match=r"2 cloned voices .*delete unused cloned voices") as raised:
        register(registry, "carol")
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [voice.voice_id for voice in registry.list()] == ["Tingting", "alice", "bob"] and wav_files(tmp_path) == 2
    registry.delete("alice")
    register(registry, "carol")  # room again
    assert [voice.voice_id for voice in registry.list()] == ["Tingting", "bob", "carol"]


def test_cloned_voices_are_bounded_by_bytes(tmp_path: Path) -> None:
    one = len(prompt_wav())  # stored as the same 16-bit WAV
    registry = VoiceRegistry.open(None, tmp_path / "registry", max_bytes=2 * one + one // 2)
    register(registry, "alice")
    register(registry, "bob")
    with pytest.raises(ResourceExhausted, match=r"TTS_MAX_CLONED_VOICE_BYTES.*delete unused cloned voices"):
        register(registry, "carol")
    assert wav_files(tmp_path) == 2
    # A registry already over a lowered bound keeps its voices and takes no more.
    reopened = VoiceRegistry.open(None, tmp_path / "registry", max_bytes=one)
    assert [voice.voice_id for voice in reopened.list()] == ["alice", "bob"]
    with pytest.raises(ResourceExhausted, match="MiB"):
        register(reopened, "carol")
    reopened.delete("alice")
    reopened.delete("bob")
    register(reopened, "carol")


def test_simulated_crash_between_wav_and_index_leaves_old_voices(tmp_path: Path, monkeypatch) -> None:
    registry = VoiceRegistry.open(None, tmp_path / "registry")
    register(registry)
    real = voices_module.write_atomically

    def crash_on_index(path, payload, **kwargs):
        if Path(path).name == "index.json":
            raise KeyboardInterrupt("simulated crash")
        real(path, payload, **kwargs)

    monkeypatch.setattr(voices_module, "write_atomically", crash_on_index)
    with pytest.raises(KeyboardInterrupt):
        register(registry, "bob")
    monkeypatch.undo()
    assert len(list((tmp_path / "registry" / "wavs").iterdir())) == 2  # bob's orphan WAV
    reopened = VoiceRegistry.open(None, tmp_path / "registry")
    assert [voice.voice_id for voice in reopened.list()] == ["alice"]
    assert len(list((tmp_path / "registry" / "wavs").iterdir())) == 1  # swept


_WORKER = """
import sys
from pathlib import Path
sys.path[:0] = [{root!r}]
from services.tts.voices import VoiceRegistry
registry = VoiceRegistry.open(None, Path({registry!r}))
wav = Path({wav!r}).read_bytes()
print("ready", flush=True)
for n in range(10**6):
    registry.register(f"{prefix}{{n}}", "Alice", wav, "今天天气真好。", {tokens!r}, ("zh",))
    if n % 3 == 2:
        registry.delete(f"{prefix}{{n - 1}}")
"""


def check_complete(registry: VoiceRegistry) -> None:
    expected = np.asarray(sf.read(io.BytesIO(prompt_wav()), dtype="float32")[0])
    for voice in registry.list():
        samples, rate = sf.read(voice.prompt_wav, dtype="float32")
        assert rate == 24000 and np.array_equal(samples, expected), voice.voice_id
        assert voice.prompt_tokens == TOKENS and voice.prompt_text and voice.display_name == "Alice"
        assert voice.language_codes == ("zh",)
    listed = {voice.prompt_wav.name for voice in registry.list()}
    on_disk = {path.name for path in (registry._dir / "wavs").iterdir()}
    assert on_disk == listed  # no orphans or temporaries after the sweep
    assert not [p for p in registry._dir.iterdir() if p.name.endswith(".tmp")]


def test_sigkill_during_registration_leaves_a_readable_registry(tmp_path: Path) -> None:
    """Kill a real process at random moments while it registers and deletes voices in a loop;
    every reopen must list only complete voices and keep the old ones."""
    directory = tmp_path / "registry"
    registry = VoiceRegistry.open(None, directory)
    old = [register(registry, name) for name in ("old1", "old2")]
    rng = random.Random(1234)
    wav = tmp_path / "prompt.wav"
    wav.write_bytes(prompt_wav())
    registered = set()
    for round_ in range(8):
        code = _WORKER.format(
            root=str(ROOT), registry=str(directory), wav=str(wav), tokens=TOKENS, prefix=f"r{round_}v"
        )
        worker = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        assert worker.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.6))
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        reopened = VoiceRegistry.open(None, directory)
        check_complete(reopened)
        for voice in old:
            assert reopened.get(voice.voice_id) == voice
        registered |= {voice.voice_id for voice in reopened.list()} - {"old1", "old2"}
    assert len(registered) > 20, "the workers hardly registered anything: the test proves little"


# --- tools.build_voices -------------------------------------------------------------------


def test_build_voices_from_the_shared_manifest(tmp_path: Path, shared_data: Path, tiny_models_dir: Path) -> None:  # noqa: F811
    from tools.build_voices import main

    out = tmp_path / "voices"
    assert main(["--tokenizer-models", str(tiny_models_dir), "--out", str(out), "--source", str(shared_data)]) == 0
    registry = VoiceRegistry.open(out, tmp_path / "registry")
    assert [voice.voice_id for voice in registry.list()] == ["Tingting"]
    tingting = registry.get("Tingting")
    assert set(tingting.music) == {"rap", "humming"}
    shared = json.loads((shared_data / "manifest.json").read_text())["speakers"]
    assert tingting.prompt_text == shared["Tingting"]["text"]
    assert tingting.music["rap"].prompt_text == shared["TingtingRAP"]["text"]
    assert tingting.music["humming"].prompt_wav.name == "TingtingHumming_prompt.wav"
    for prompt in (tingting, *tingting.music.values()):
        assert prompt.prompt_wav.is_file() and prompt.builtin
        duration = sf.info(prompt.prompt_wav).duration
        tokens = prompt.prompt_tokens
        assert len(tokens) % 5 == 0 and all(65536 <= t < 65536 + 5120 for t in tokens)
        # trimmed: at most the untrimmed count (41.67 tokens/s), and most of it (speech prompts)
        assert 0.5 * duration * 41.67 < len(tokens) <= duration * 41.67 + 5
