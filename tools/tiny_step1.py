"""Tiny random Step1 checkpoints (the Step-Audio-Chat / Step-Audio-TTS-3B architecture) for tests and benches.

    python -m tools.tiny_step1 OUT_DIR [--name Step-Audio-Chat]

The files have exactly the formats of the published checkpoints (docs/chat.md, shared STEP_AUDIO_REFERENCE §1-3):

- ``config.json``: model_type ``step1``, architectures ``Step1ForCausalLM``, ``auto_map`` to a local
  ``configuration_step1.py``, ``num_attention_groups`` (the KV heads), ``max_seq_len``, bos/pad/eos 1/0/3, bf16;
- ``model-0000N.safetensors`` + ``model.safetensors.index.json`` with the real weight names (no biases), bf16, and a
  separate (untied, different) ``lm_head.weight`` in another shard than ``model.embed_tokens.weight``;
- ``tokenizer.json`` + ``tokenizer_config.json``: a sentencepiece-style Unigram model (byte fallback, Metaspace with
  ``prepend_scheme: first``, BOS added by the post-processor) whose id layout is the real one: ``<unk>``=0, ``<s>``=1,
  ``</s>``=2, ``<|EOT|>``=3, ``<|BOT|>``=4, byte pieces from 68 (``\\n`` = ``<0x0A>`` = 78), ``<audio_N>`` = 65536+N
  for N < 5120, 74752 ids in all (9284 added tokens, as in the real tokenizer).

Only numpy and ``tokenizers`` are needed (safetensors is written by hand: an 8-byte header length, a JSON header,
raw little-endian data). The weights are random: the model says nothing sensible, it only exercises the plumbing.
On a CPU vLLM the Step1 attention (sqrt-ALiBi) needs the test plugin in tools/vllm_cpu_test_plugin.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np

UNK_ID, BOS_ID, EOS_PIECE_ID, EOT_ID, BOT_ID = 0, 1, 2, 3, 4
BYTE_BASE = 68  # <0x00>; "\n" = <0x0A> = 78 as in the real tokenizer
AUDIO_BASE = 65536
AUDIO_COUNT = 5120
SPIECE = "\u2581"  # ▁

# Words that get whole pieces (with and without the ▁ prefix) so that prompts tokenize into few, predictable ids.
WORDS = (
    "human", "assistant", "system", "hello", "hi", "you", "are", "a", "helpful", "what", "is", "the", "weather",
    "today", "how", "I", "am", "fine", "thank", "and", "it", "sunny", "good", "morning", "name", "my", "your",
)  # fmt: skip

CONFIGURATION_STEP1 = '''"""Configuration of Step1 models (tiny test checkpoints of stepaudio-serving)."""

from transformers.configuration_utils import PretrainedConfig


class Step1Config(PretrainedConfig):
    """Step1: pre-norm decoder with grouped-query attention, sqrt-ALiBi positions and SwiGLU feed-forward."""

    model_type = "step1"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        hidden_size=768,
        intermediate_size=2048,
        num_attention_heads=12,
        num_attention_groups=4,
        num_hidden_layers=12,
        max_seq_len=4096,
        vocab_size=74752,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        pad_token_id=0,
        eos_token_id=3,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_attention_heads = num_attention_heads
        self.num_attention_groups = num_attention_groups
        self.num_hidden_layers = num_hidden_layers
        self.max_seq_len = max_seq_len
        self.vocab_size = vocab_size
        self.rms_norm_eps = rms_norm_eps
        super().__init__(bos_token_id=bos_token_id, pad_token_id=pad_token_id, eos_token_id=eos_token_id, **kwargs)
'''


def _pieces() -> list[tuple[str, float]]:
    """The Unigram vocabulary in id order (74752 pieces)."""
    pieces: list[tuple[str, float]] = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("<|EOT|>", 0.0), ("<|BOT|>", 0.0)]
    pieces += [(f"<|reserved_{k}|>", 0.0) for k in range(BYTE_BASE - len(pieces))]
    pieces += [(f"<0x{b:02X}>", 0.0) for b in range(256)]
    seen = {piece for piece, _ in pieces}

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    add(SPIECE, -8.0)
    for word in WORDS:
        add(SPIECE + word, -4.0)
        add(word, -4.5)
    for code in range(33, 127):  # printable ASCII, then the same after ▁
        add(chr(code), -9.0)
    for code in range(33, 127):
        add(SPIECE + chr(code), -9.5)
    # CJK unified ideographs (basic block, extension A), then extension B as filler up to the audio ids.
    for code in [*range(0x4E00, 0xA000), *range(0x3400, 0x4DC0), *range(0x20000, 0x2A6E0)]:
        if len(pieces) == AUDIO_BASE:
            break
        add(chr(code), -10.0 if code < 0x20000 else -14.0)
    assert len(pieces) == AUDIO_BASE, len(pieces)
    pieces += [(f"<audio_{n}>", 0.0) for n in range(AUDIO_COUNT)]
    pieces += [(f"<|extra_{k}|>", 0.0) for k in range(74752 - len(pieces))]
    return pieces


def build_tokenizer(vocab: int = 74752):  # -> tokenizers.Tokenizer
    """The fixture tokenizer (see the module docstring for its id layout)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if vocab != 74752:
        raise ValueError("the tokenizer layout is the real one: vocab must be 74752")
    pieces = _pieces()
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=UNK_ID, byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPIECE, prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(SPIECE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    special = [piece for piece, _ in pieces[:BYTE_BASE]] + [piece for piece, _ in pieces[AUDIO_BASE + AUDIO_COUNT :]]
    tokenizer.add_special_tokens([AddedToken(piece, special=True, normalized=False) for piece in special])
    audio = [piece for piece, _ in pieces[AUDIO_BASE : AUDIO_BASE + AUDIO_COUNT]]
    tokenizer.add_tokens([AddedToken(piece, special=False, normalized=False) for piece in audio])
    return tokenizer


def _bf16_bytes(array: np.ndarray) -> bytes:
    """float32 → bfloat16 (round to nearest even), little-endian bytes."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return rounded.astype("<u2").tobytes()


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write float32 arrays as a bf16 safetensors file."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name, array in tensors.items():
        blob = _bf16_bytes(array)
        header[name] = {"dtype": "BF16", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for blob in blobs:
            out.write(blob)


def write_tiny_step1(
    out_dir: str | Path,
    *,
    name: str = "Step-Audio-Chat",
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 74752,
    seed: int = 0,
    intermediate: int | None = None,
    max_seq_len: int = 1024,
    tie_word_embeddings: bool | None = False,
) -> Path:
    """Write a tiny random Step1 checkpoint to ``out_dir/name`` and return that directory.

    ``tie_word_embeddings`` None omits the key, as the published Step-Audio configs do (vLLM then ties the head to
    the embedding unless told otherwise). The head is always stored and always differs from the embedding.
    """
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden {hidden} must divide by heads {heads}, and heads by kv_heads {kv_heads}")
    directory = Path(out_dir) / name
    directory.mkdir(parents=True, exist_ok=True)
    intermediate = intermediate or 2 * hidden
    head_dim = hidden // heads
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(0.0, 0.02, size=shape).astype(np.float32)

    first: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal(vocab, hidden)}
    for layer in range(layers):
        prefix = f"model.layers.{layer}."
        first[prefix + "input_layernorm.weight"] = np.ones(hidden, np.float32)
        first[prefix + "self_attn.q_proj.weight"] = normal(hidden, hidden)
        first[prefix + "self_attn.k_proj.weight"] = normal(kv_heads * head_dim, hidden)
        first[prefix + "self_attn.v_proj.weight"] = normal(kv_heads * head_dim, hidden)
        first[prefix + "self_attn.o_proj.weight"] = normal(hidden, hidden)
        first[prefix + "post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
        first[prefix + "mlp.gate_proj.weight"] = normal(intermediate, hidden)
        first[prefix + "mlp.up_proj.weight"] = normal(intermediate, hidden)
        first[prefix + "mlp.down_proj.weight"] = normal(hidden, intermediate)
    second = {"model.norm.weight": np.ones(hidden, np.float32), "lm_head.weight": normal(vocab, hidden)}
    shards = {"model-00001.safetensors": first, "model-00002.safetensors": second}
    weight_map = {}
    total = 0
    for file_name, tensors in shards.items():
        write_safetensors(directory / file_name, tensors)
        for tensor_name, array in tensors.items():
            weight_map[tensor_name] = file_name
            total += array.size * 2
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    config: dict[str, object] = {
        "architectures": ["Step1ForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_step1.Step1Config"},
        "model_type": "step1",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_attention_heads": heads,
        "num_attention_groups": kv_heads,
        "num_hidden_layers": layers,
        "max_seq_len": max_seq_len,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "bos_token_id": BOS_ID,
        "pad_token_id": 0,
        "eos_token_id": EOT_ID,
        "torch_dtype": "bfloat16",
    }
    if tie_word_embeddings is not None:
        config["tie_word_embeddings"] = tie_word_embeddings
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "configuration_step1.py").write_text(CONFIGURATION_STEP1)

    build_tokenizer(vocab).save(str(directory / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 65536,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--name", default="Step-Audio-Chat")
    parser.add_argument("--omit-tie-key", action="store_true", help="omit tie_word_embeddings, as the real configs do")
    args = parser.parse_args()
    directory = write_tiny_step1(args.out_dir, name=args.name, tie_word_embeddings=None if args.omit_tie_key else False)
    print(directory)


if __name__ == "__main__":
    main()
