"""Write tiny stand-ins of the Step-Audio checkpoints, in the real file formats and layouts.

    python -m tools.tiny_models --out DIR                              # every checkpoint
    python -m tools.tiny_models --out DIR --only Step-Audio-Tokenizer  # some of them

Each checkpoint has one writer function in ``WRITERS``; later checkpoints (Step-Audio-Chat,
Step-Audio-TTS-3B) add theirs beside it. The weights are random with fixed seeds (deterministic
output), small enough for CI, and loaded by exactly the code that loads the real files.
Needs the tokenizer environment (torch, funasr) and the ``onnx`` package (dev-step-audio.txt).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

# --- Step-Audio-Tokenizer ------------------------------------------------------------------

_LFR_DIM = 560  # 80 mel bins x lfr_m 7
_ENCODER_DIM = 64
_TOKENS = ["<blank>", "<s>", "</s>", *"的是了我你他在有这个不人a b c d e f g".split(), "@@", "<unk>"]

_PARAFORMER_CONFIG = f"""\
# Tiny Paraformer-streaming (same classes as the real 8501-vocab model, ~270 K parameters).
model: ParaformerStreaming
model_conf:
  ctc_weight: 0.0
  lsm_weight: 0.1
  length_normalized_loss: true
  predictor_weight: 1.0
  predictor_bias: 1
  sampling_ratio: 0.75
encoder: SANMEncoderChunkOpt
encoder_conf:
  output_size: {_ENCODER_DIM}
  attention_heads: 4
  linear_units: 128
  num_blocks: 2
  dropout_rate: 0.0
  positional_dropout_rate: 0.0
  attention_dropout_rate: 0.0
  input_layer: pe_online
  pos_enc_class: SinusoidalPositionEncoder
  normalize_before: true
  kernel_size: 11
  sanm_shfit: 0
  selfattention_layer_type: sanm
  chunk_size: [12, 15]
  stride: [8, 10]
  pad_left: [0, 0]
  encoder_att_look_back_factor: [4, 4]
  decoder_att_look_back_factor: [1, 1]
decoder: ParaformerSANMDecoder
decoder_conf:
  attention_heads: 4
  linear_units: 128
  num_blocks: 1
  dropout_rate: 0.0
  positional_dropout_rate: 0.0
  self_attention_dropout_rate: 0.0
  src_attention_dropout_rate: 0.0
  att_layer_num: 1
  kernel_size: 11
  sanm_shfit: 5
predictor: CifPredictorV2
predictor_conf:
  idim: {_ENCODER_DIM}
  threshold: 1.0
  l_order: 1
  r_order: 0
  tail_threshold: 0.45
frontend: WavFrontendOnline
frontend_conf:
  fs: 16000
  window: hamming
  n_mels: 80
  frame_length: 25
  frame_shift: 10
  lfr_m: 7
  lfr_n: 6
  dither: 0.0
specaug: SpecAugLFR
specaug_conf:
  apply_time_warp: false
  apply_freq_mask: true
  freq_mask_width_range: [0, 30]
  num_freq_mask: 1
  lfr_rate: 6
  apply_time_mask: true
  time_mask_width_range: [0, 12]
  num_time_mask: 1
tokenizer: CharTokenizer
tokenizer_conf:
  unk_symbol: <unk>
"""

_CONFIGURATION = {
    "framework": "pytorch",
    "task": "auto-speech-recognition",
    "model": {"type": "funasr"},
    "file_path_metas": {
        "init_param": "model.pt",
        "config": "config.yaml",
        "tokenizer_conf": {"token_list": "tokens.json"},
        "frontend_conf": {"cmvn_file": "am.mvn"},
    },
}


def _kaldi_vector(values: np.ndarray) -> str:
    return "[ " + " ".join(f"{v:.6f}" for v in values) + " ]"


def _am_mvn(rng: np.random.Generator) -> str:
    """Kaldi nnet CMVN: shift by -mean, scale by 1/std (log-mel fbank of speech is ~8-14)."""
    mean = rng.uniform(8.0, 14.0, _LFR_DIM)
    std = rng.uniform(2.0, 4.0, _LFR_DIM)
    return (
        "<Nnet>\n"
        f"<Splice> {_LFR_DIM} {_LFR_DIM}\n{_kaldi_vector(np.zeros(1))}\n"
        f"<AddShift> {_LFR_DIM} {_LFR_DIM}\n<LearnRateCoef> 0 {_kaldi_vector(-mean)}\n"
        f"<Rescale> {_LFR_DIM} {_LFR_DIM}\n<LearnRateCoef> 0 {_kaldi_vector(1.0 / std)}\n"
        "</Nnet>\n"
    )


def _write_paraformer(folder: Path, seed: int) -> None:
    import torch

    from services.tokenizer.engines.step_audio.funasr_import import auto_model_class

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (folder / "config.yaml").write_text(_PARAFORMER_CONFIG)
    (folder / "configuration.json").write_text(json.dumps(_CONFIGURATION, indent=2))
    (folder / "tokens.json").write_text(json.dumps(_TOKENS, ensure_ascii=False))
    (folder / "am.mvn").write_text(_am_mvn(rng))
    # Build the model through funasr from this config (no model.pt yet: random init), then save it.
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # funasr's version banner
        auto = auto_model_class()(
            model=str(folder), disable_update=True, device="cpu", ncpu=1, log_level="ERROR", init_param=None
        )
    torch.save(auto.model.state_dict(), folder / "model.pt")


def _write_codebook(path: Path, seed: int) -> None:
    centres = np.random.default_rng(seed).standard_normal((1024, _ENCODER_DIM)).astype(np.float32)
    np.save(path, centres)


def _write_vq06_onnx(path: Path, seed: int) -> None:
    """Same signature as speech_tokenizer_v1.onnx: feats [1,128,T] f32, feats_length [1] i32 ->
    int64 ids [1, ceil(T/4)] in [0, 4096). A stride-4 conv, three 16-way argmax heads: 16^3 codes."""
    import torch

    class TinyS3(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(128, 48, kernel_size=4, stride=4)

        def forward(self, feats: torch.Tensor, feats_length: torch.Tensor) -> torch.Tensor:
            frames = torch.arange(feats.shape[2], device=feats.device)
            mask = (frames[None, None, :] < feats_length.to(torch.int64)[:, None, None]).to(feats.dtype)
            x = torch.nn.functional.pad(feats * mask, (0, 3))  # ceil(T/4) output steps
            heads = self.conv(x).reshape(feats.shape[0], 3, 16, -1).argmax(dim=2)  # [B, 3, ceil(T/4)]
            return heads[:, 0] * 256 + heads[:, 1] * 16 + heads[:, 2]

    torch.manual_seed(seed)
    model = TinyS3().eval()
    example = (torch.zeros(1, 128, 40), torch.tensor([40], dtype=torch.int32))
    with warnings.catch_warnings():  # the legacy exporter's shape-inference chatter
        warnings.simplefilter("ignore")
        _export(model, example, path)


def _export(model: object, example: tuple[object, ...], path: Path) -> None:
    import torch

    torch.onnx.export(
        model,
        example,
        str(path),
        input_names=["feats", "feats_length"],
        output_names=["indices"],
        dynamic_axes={"feats": {2: "T"}, "indices": {1: "T4"}},
        opset_version=17,
        dynamo=False,
    )


def write_step_audio_tokenizer(out: Path, seed: int = 0) -> Path:
    """``out/Step-Audio-Tokenizer/``: linguistic_tokenizer.npy, speech_tokenizer_v1.onnx, Paraformer folder."""
    from services.tokenizer.engines.step_audio.layout import CHECKPOINT, TokenizerPaths

    paths = TokenizerPaths(out / CHECKPOINT)
    paths.root.mkdir(parents=True, exist_ok=True)
    _write_codebook(paths.codebook, seed + 1)
    _write_vq06_onnx(paths.vq06_onnx, seed + 2)
    _write_paraformer(paths.paraformer, seed + 3)
    return paths.root


WRITERS: dict[str, Callable[[Path], Path]] = {"Step-Audio-Tokenizer": write_step_audio_tokenizer}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="directory that receives one folder per checkpoint")
    parser.add_argument("--only", action="append", choices=sorted(WRITERS), help="write only these (repeatable)")
    args = parser.parse_args(argv)
    for name in args.only or list(WRITERS):
        root = WRITERS[name](args.out)
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        print(f"{name}: {root} ({math.ceil(size / 1024)} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
