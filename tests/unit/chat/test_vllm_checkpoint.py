"""Start-up checks of the vllm chat engine (pure Python: runs without vLLM)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.chat.engines.vllm_engine.checkpoint import (
    CheckpointError,
    check_parallel,
    plan_step1,
    tie_overrides,
)
from services.chat.settings import ChatSettings
from tools.tiny_step1 import write_safetensors, write_tiny_step1

CHAT = {"num_attention_heads": 96, "num_attention_groups": 8, "num_hidden_layers": 88, "intermediate_size": 31232}
TTS = {"num_attention_heads": 48, "num_attention_groups": 4, "num_hidden_layers": 32, "intermediate_size": 8192}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    write_tiny_step1(directory, tie_word_embeddings=None)
    return directory


def settings(directory: Path, **overrides: object) -> ChatSettings:
    values = {"engine": "vllm", "models_dir": str(directory), "vllm_tensor_parallel_size": 1, **overrides}
    return ChatSettings(**values)


@pytest.mark.parametrize(("config", "tp"), [(CHAT, 1), (CHAT, 8), (CHAT, 16), (TTS, 1), (TTS, 8), (TTS, 16)])
def test_tensor_parallel_sizes_that_fit(config: dict, tp: int) -> None:
    check_parallel(config, tp, 1)


@pytest.mark.parametrize(
    ("config", "tp", "pp", "message"),
    [
        (CHAT, 5, 1, "does not divide the 96 attention heads"),
        (TTS, 6, 1, "above the 4 KV heads (num_attention_groups) and not a multiple"),
        ({**CHAT, "num_attention_groups": 12}, 8, 1, "does not divide the 12 KV heads"),
        ({**CHAT, "intermediate_size": 100}, 8, 1, "does not divide intermediate_size 100"),
        (CHAT, 8, 89, "PIPELINE_PARALLEL_SIZE 89 is more than the 88 layers"),
    ],
)
def test_parallel_sizes_that_do_not_fit(config: dict, tp: int, pp: int, message: str) -> None:
    with pytest.raises(CheckpointError, match="CHAT_VLLM_") as raised:
        check_parallel(config, tp, pp)
    assert message in str(raised.value)


def test_plan_of_the_tiny_checkpoint_unties_the_head(models_dir: Path) -> None:
    plan = plan_step1(settings(models_dir))
    assert plan.path == models_dir / "Step-Audio-Chat"
    assert plan.max_model_len == 1024  # the checkpoint's max_seq_len
    assert plan.world_size == 1
    assert plan.hf_overrides == {"tie_word_embeddings": False}
    assert "differs" in plan.notes[0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"models_dir": ""}, "set CHAT_MODELS_DIR"),
        ({"vllm_model": "Nope"}, "is not a directory"),
        ({"vllm_tensor_parallel_size": 8}, "does not divide the 4 attention heads"),
        ({"vllm_max_model_len": 4096}, "above the model's max_seq_len 1024"),
        ({"vllm_distributed_executor_backend": "slurm"}, "is not one of ('mp', 'ray')"),
    ],
)
def test_plan_rejects_bad_settings(models_dir: Path, overrides: dict, message: str) -> None:
    with pytest.raises(CheckpointError) as raised:
        plan_step1(settings(models_dir, **overrides))
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("configuration_step1.py", "auto_map needs"),
        ("model-00002.safetensors", "names 1 missing shard(s)"),
        ("tokenizer.json", "no tokenizer.json or tokenizer.model"),
        ("config.json", "config.json is missing"),
    ],
)
def test_plan_rejects_incomplete_checkpoints(tmp_path: Path, missing: str, message: str) -> None:
    write_tiny_step1(tmp_path, vocab=74752, hidden=32, heads=1, kv_heads=1, layers=1)
    (tmp_path / "Step-Audio-Chat" / missing).unlink()
    with pytest.raises(CheckpointError) as raised:
        plan_step1(settings(tmp_path))
    assert message in str(raised.value)


def small_checkpoint(path: Path, *, head: str, tie: bool | None) -> tuple[Path, dict]:
    """embed (and maybe lm_head) in two shards; head: 'same' | 'different' | 'none'."""
    rng = np.random.default_rng(1)
    embed = rng.normal(size=(64, 8)).astype(np.float32)
    tensors = {"lm_head.weight": embed.copy() if head == "same" else rng.normal(size=(64, 8)).astype(np.float32)}
    write_safetensors(path / "a.safetensors", {"model.embed_tokens.weight": embed})
    if head != "none":
        write_safetensors(path / "b.safetensors", tensors)
    config = {} if tie is None else {"tie_word_embeddings": tie}
    return path, config


@pytest.mark.parametrize(
    ("head", "tie", "overrides"),
    [
        ("different", None, {"tie_word_embeddings": False}),  # the published Step-Audio case
        ("different", True, {"tie_word_embeddings": False}),
        ("different", False, {}),
        ("same", None, {"tie_word_embeddings": False}),
        ("same", True, {}),
        ("none", None, {}),
        ("none", True, {}),
    ],
)
def test_tie_overrides(tmp_path: Path, head: str, tie: bool | None, overrides: dict) -> None:
    path, config = small_checkpoint(tmp_path, head=head, tie=tie)
    assert tie_overrides(path, config)[0] == overrides


def test_tie_false_without_a_stored_head_is_an_error(tmp_path: Path) -> None:
    path, config = small_checkpoint(tmp_path, head="none", tie=False)
    with pytest.raises(CheckpointError, match=r"stores no lm_head\.weight"):
        tie_overrides(path, config)


def test_tiny_checkpoint_files(models_dir: Path) -> None:
    directory = models_dir / "Step-Audio-Chat"
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "step1" and config["architectures"] == ["Step1ForCausalLM"]
    assert config["auto_map"] == {"AutoConfig": "configuration_step1.Step1Config"}
    assert "tie_word_embeddings" not in config  # written like the real configs for this fixture
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["lm_head.weight"] != index["weight_map"]["model.embed_tokens.weight"]
