"""Folder loading: yaml parsing, strict state-dict checks, the music variant."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from services.tts.decoder import CheckpointMismatch, DecoderConfigError, DecoderOptions, StepAudioDecoder
from services.tts.decoder.checkpoint import load_strict, normalise_keys
from services.tts.decoder.config import load_config, load_yaml
from services.tts.decoder.flow import FlowModel
from tests.unit.tts.decoder.conftest import prompt_wav
from tools.tiny_models import DECODER_FOLDERS

CPU = DecoderOptions(device="cpu", flow_dtype="float32")


def test_yaml_tags_are_tolerated_and_refs_resolved(decoder_dir: Path) -> None:
    tree = load_yaml(decoder_dir / "cosyvoice.yaml")
    assert tree["flow"]["_tag"] == "!new:cosyvoice.flow.flow.MaskedDiffWithXvec"
    assert tree["flow"]["spk_embed_dim"] == 192  # !ref <spk_embed_dim>
    assert tree["__set_seed1"] is None  # !apply: is never called
    config = load_config(decoder_dir / "cosyvoice.yaml")
    assert config.flow.input_frame_rate == pytest.approx(125 / 3)
    assert config.flow.inference_cfg_rate == 0.7
    assert config.flow.vocab_size == 5121 and config.hift.hop_length == 256
    assert config.mel.fmax == 8000 and config.hift.sampling_rate == 22050


def test_unsupported_options_are_refused(tmp_path: Path, decoder_dir: Path) -> None:
    text = (decoder_dir / "cosyvoice.yaml").read_text().replace("use_cnn_module: False", "use_cnn_module: True")
    (tmp_path / "cosyvoice.yaml").write_text(text)
    with pytest.raises(DecoderConfigError, match="use_cnn_module"):
        load_config(tmp_path / "cosyvoice.yaml")


def _copy(decoder_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(decoder_dir, target)
    return target


def test_tiny_folder_loads_strictly_and_decodes(decoder_dir: Path) -> None:
    decoder = StepAudioDecoder.load(decoder_dir, CPU)
    voice = decoder.prepare_voice(prompt_wav(44100, 1.5), 44100, [1, 2, 3, 1024, 2000])
    assert voice.embedding.shape == (192,) and voice.prompt_mel.shape == (int(1.5 * 22050) // 256, 80)
    audio = decoder.decode(voice, list(range(40)))
    assert audio.shape == (decoder.frames_for(40) * 256,) and np.isfinite(audio).all()


def test_every_bad_tensor_is_named(decoder_dir: Path, tmp_path: Path) -> None:
    folder = _copy(decoder_dir, tmp_path)
    flow = torch.load(folder / "flow.pt", weights_only=True)
    del flow["encoder.encoders.1.self_attn.pos_bias_u"]
    del flow["length_regulator.model.12.bias"]
    flow["input_embedding.weight"] = flow["input_embedding.weight"][:4096]
    flow["encoder.encoders.0.conv_module.pointwise_conv1.weight"] = torch.zeros(1)
    torch.save(flow, folder / "flow.pt")
    hift = torch.load(folder / "hift.pt", weights_only=True)
    del hift["conv_post.weight_g"]
    torch.save(hift, folder / "hift.pt")
    with pytest.raises(DecoderConfigError) as caught:
        StepAudioDecoder.load(folder, CPU)
    message = str(caught.value)
    for name in (
        "encoder.encoders.1.self_attn.pos_bias_u",
        "length_regulator.model.12.bias",
        "input_embedding.weight [4096, 32] (expected [5121, 32])",
        "encoder.encoders.0.conv_module.pointwise_conv1.weight",
        "conv_post.weight_g",
        "flow.pt",
        "hift.pt",
    ):
        assert name in message


def test_missing_files_are_listed(decoder_dir: Path, tmp_path: Path) -> None:
    folder = _copy(decoder_dir, tmp_path)
    (folder / "hift.pt").unlink()
    (folder / "campplus.onnx").unlink()
    with pytest.raises(DecoderConfigError, match=r"missing hift\.pt, campplus\.onnx"):
        StepAudioDecoder.load(folder, CPU)


def test_lfs_pointer_is_reported(decoder_dir: Path, tmp_path: Path) -> None:
    folder = _copy(decoder_dir, tmp_path)
    (folder / "flow.pt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n")
    with pytest.raises(DecoderConfigError, match=r"flow\.pt: not a readable torch state dict"):
        StepAudioDecoder.load(folder, CPU)


def test_strict_load_reports_all_three_kinds(decoder: StepAudioDecoder) -> None:
    state = dict(decoder.flow.state_dict())
    state.pop("encoder_proj.bias")
    state["extra.weight"] = torch.zeros(1)
    state["encoder_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointMismatch) as caught:
        load_strict(FlowModel(decoder.config.flow), state, "flow.pt")
    error = caught.value
    assert error.missing == ["encoder_proj.bias"] and error.unexpected == ["extra.weight"]
    assert error.mismatched == ["encoder_proj.weight [3, 3] (expected [80, 32])"]


def test_parametrized_weight_norm_names_are_accepted() -> None:
    state = {
        "generator.conv_pre.parametrizations.weight.original0": torch.zeros(1),
        "generator.conv_pre.parametrizations.weight.original1": torch.zeros(1),
    }
    assert set(normalise_keys(state)) == {"conv_pre.weight_g", "conv_pre.weight_v"}


def test_music_variant_loads_through_the_same_path(decoder_root: Path, decoder: StepAudioDecoder) -> None:
    music = StepAudioDecoder.load(decoder_root / DECODER_FOLDERS[1], CPU)
    voice = decoder.prepare_voice(prompt_wav(), 16000, [5, 6, 7])
    a, b = decoder.decode(voice, range(30)), music.decode(voice, range(30))
    assert a.shape == b.shape and not np.allclose(a, b)
