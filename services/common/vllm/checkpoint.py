"""Start-up checks of a Step1 checkpoint (Step-Audio-Chat, Step-Audio-TTS-3B) against vLLM settings (pure Python).

Everything here runs before vLLM starts, so a wrong setting fails in a second with a message naming the setting,
instead of minutes later inside a worker process. Messages name settings through ``Step1Options`` (each service
spells its settings with its own prefix: ``CHAT_VLLM_…``, ``TTS_STEP_AUDIO_…``).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STEP1_ARCHITECTURE = "Step1ForCausalLM"
EXECUTOR_BACKENDS = ("mp", "ray")
_CHUNK = 16 * 1024 * 1024


class CheckpointError(ValueError):
    """A setting does not fit the checkpoint, or the checkpoint is incomplete."""


@dataclass(frozen=True)
class Step1Options:
    """The settings a Step1 plan depends on, and the names under which the service exposes them."""

    models_dir: str
    model: str
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str = "mp"
    max_model_len: int = 0  # 0: the checkpoint's max_seq_len
    prefix: str = ""  # environment prefix of the parallel / length settings, e.g. "CHAT_VLLM_"
    models_dir_setting: str = "MODELS_DIR"
    model_setting: str = "MODEL"

    def name(self, setting: str) -> str:
        return f"{self.prefix}{setting}"


@dataclass(frozen=True)
class TensorLocation:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


@dataclass(frozen=True)
class Step1Plan:
    """What the engine needs to start vLLM, derived from settings + checkpoint."""

    path: Path
    config: dict[str, Any]
    max_model_len: int
    world_size: int
    hf_overrides: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def read_safetensors_header(path: Path) -> dict[str, TensorLocation]:
    """Tensor locations of one safetensors file (reads only its JSON header)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    base = 8 + length
    locations = {}
    for name, meta in header.items():
        if name != "__metadata__":
            start, end = meta["data_offsets"]
            locations[name] = TensorLocation(path, meta["dtype"], tuple(meta["shape"]), base + start, base + end)
    return locations


def weight_files(path: Path) -> list[Path]:
    """The safetensors shards of a checkpoint; CheckpointError when the index names a missing file or none exist."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [name for name in names if not (path / name).is_file()]
        if missing:
            raise CheckpointError(f"{index} names {len(missing)} missing shard(s), e.g. {missing[0]}")
        return [path / name for name in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors weights in {path}")
    return files


def find_tensors(path: Path, names: set[str]) -> dict[str, TensorLocation]:
    found: dict[str, TensorLocation] = {}
    for file in weight_files(path):
        header = read_safetensors_header(file)
        found.update({name: location for name, location in header.items() if name in names})
    return found


def tensors_equal(a: TensorLocation, b: TensorLocation) -> bool:
    """Byte-for-byte comparison in 16 MiB chunks (never loads a whole tensor). The first chunk settles it for
    independently trained matrices."""
    if a.dtype != b.dtype or a.shape != b.shape or a.end - a.start != b.end - b.start:
        return False
    with a.file.open("rb") as first, b.file.open("rb") as second:
        first.seek(a.start)
        second.seek(b.start)
        remaining = a.end - a.start
        while remaining:
            size = min(_CHUNK, remaining)
            if first.read(size) != second.read(size):
                return False
            remaining -= size
    return True


def tie_overrides(path: Path, config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``hf_overrides`` for the output head, and why.

    vLLM's Step1 ties ``lm_head`` to ``embed_tokens`` when ``tie_word_embeddings`` is true, and a config WITHOUT the
    key counts as true (the published Step-Audio configs omit it), so the checkpoint's own ``lm_head.weight`` would
    be skipped. Untie when the key is absent and a head is stored, or when the stored head differs from the
    embedding.
    """
    found = find_tensors(path, {"lm_head.weight", "model.embed_tokens.weight"})
    if "model.embed_tokens.weight" not in found:
        raise CheckpointError(f"no model.embed_tokens.weight in the weights of {path}")
    head = found.get("lm_head.weight")
    declared = config.get("tie_word_embeddings")
    if head is None:
        if declared is False:
            raise CheckpointError(f"config.json sets tie_word_embeddings false but {path} stores no lm_head.weight")
        return {}, "no lm_head.weight stored: the head is the embedding (tied)"
    if declared is False:
        return {}, "tie_word_embeddings false in config.json: the stored lm_head is used"
    if not tensors_equal(head, found["model.embed_tokens.weight"]):
        return {"tie_word_embeddings": False}, (
            "lm_head.weight differs from embed_tokens and config.json "
            + ("omits tie_word_embeddings" if declared is None else "sets it true")
            + ": hf_overrides tie_word_embeddings=false"
        )
    if declared is None:
        return {"tie_word_embeddings": False}, "config.json omits tie_word_embeddings: untied (the head equals it)"
    return {}, "lm_head.weight equals embed_tokens: tied"


def check_parallel(config: dict[str, Any], tensor_parallel: int, pipeline_parallel: int, prefix: str = "") -> None:
    """The divisibility rules of vLLM's Step1 layers, with messages that name the numbers (and ``prefix``ed
    setting names)."""
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_attention_groups") or config.get("num_key_value_heads") or 1)
    layers = int(config["num_hidden_layers"])
    tp = tensor_parallel
    tp_name, pp_name = f"{prefix}TENSOR_PARALLEL_SIZE", f"{prefix}PIPELINE_PARALLEL_SIZE"
    if heads % tp:
        raise CheckpointError(
            f"{tp_name} {tp} does not divide the {heads} attention heads; "
            f"use one of {[d for d in range(1, heads + 1) if heads % d == 0 and d <= 64]}"
        )
    if kv_heads >= tp and kv_heads % tp:
        raise CheckpointError(f"{tp_name} {tp} does not divide the {kv_heads} KV heads (num_attention_groups)")
    if kv_heads < tp and tp % kv_heads:
        raise CheckpointError(
            f"{tp_name} {tp} is above the {kv_heads} KV heads (num_attention_groups) and not a "
            "multiple of them, so they cannot be replicated evenly"
        )
    intermediate = int(config.get("intermediate_size", 0))
    if intermediate % tp:
        raise CheckpointError(f"{tp_name} {tp} does not divide intermediate_size {intermediate}")
    if pipeline_parallel > layers:
        raise CheckpointError(f"{pp_name} {pipeline_parallel} is more than the {layers} layers")


def plan_step1(options: Step1Options) -> Step1Plan:
    """Validate settings and checkpoint; CheckpointError names what to fix."""
    o = options
    if not o.models_dir:
        raise CheckpointError(f"set {o.models_dir_setting} to the directory that holds {o.model}/")
    path = Path(o.models_dir) / o.model
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory ({o.models_dir_setting} / {o.model_setting})")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file} is missing")
    config = json.loads(config_file.read_text())
    if STEP1_ARCHITECTURE not in config.get("architectures", []):
        raise CheckpointError(
            f"{config_file} declares {config.get('architectures')}; this engine serves {STEP1_ARCHITECTURE} "
            "(the Step-Audio prompt format)"
        )
    for reference in config.get("auto_map", {}).values():
        module = reference.split(".")[0]
        if not (path / f"{module}.py").is_file():
            raise CheckpointError(f"config.json auto_map needs {path / (module + '.py')}, which is missing")
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file()):
        raise CheckpointError(f"no tokenizer.json or tokenizer.model in {path}")
    missing = [
        key for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size") if key not in config
    ]
    if missing:
        raise CheckpointError(f"{config_file} lacks {missing}")
    check_parallel(config, o.tensor_parallel_size, o.pipeline_parallel_size, o.prefix)
    if o.distributed_executor_backend not in EXECUTOR_BACKENDS:
        raise CheckpointError(
            f"{o.name('DISTRIBUTED_EXECUTOR_BACKEND')} {o.distributed_executor_backend!r} is not one of "
            f"{EXECUTOR_BACKENDS}"
        )
    longest = int(config.get("max_seq_len") or config.get("max_position_embeddings") or 0)
    max_model_len = o.max_model_len or longest
    if not max_model_len:
        raise CheckpointError(f"config.json has no max_seq_len: set {o.name('MAX_MODEL_LEN')}")
    if longest and max_model_len > longest:
        raise CheckpointError(f"{o.name('MAX_MODEL_LEN')} {max_model_len} is above the model's max_seq_len {longest}")
    overrides, tie_note = tie_overrides(path, config)
    return Step1Plan(
        path=path,
        config=config,
        max_model_len=max_model_len,
        world_size=o.tensor_parallel_size * o.pipeline_parallel_size,
        hf_overrides=overrides,
        notes=(tie_note,),
    )
