"""``cosyvoice.yaml`` hyperparameters, read without executing anything.

The real file is a hyperpyyaml document (``!new:``/``!name:``/``!apply:`` object tags, ``!ref <key>``
references). A safe loader turns every tagged mapping into a plain dict with the tag under ``"_tag"``,
drops ``!apply:`` calls, and resolves ``!ref <key>`` against the top-level keys. Only the values the
decoder needs are read; every other key is ignored. Values absent from the file take the CosyVoice-300M
defaults (the upstream yaml / the class defaults of the reference code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class DecoderConfigError(ValueError):
    """The decoder folder or its yaml cannot be served by this implementation."""


class _Ref:
    def __init__(self, expression: str) -> None:
        self.expression = expression


class _TagTolerantLoader(yaml.SafeLoader):
    """SafeLoader that records hyperpyyaml tags instead of constructing objects."""


def _construct_tagged(loader: _TagTolerantLoader, suffix: str, node: yaml.Node) -> Any:
    tag = node.tag
    if tag.startswith("!apply:"):
        return None
    if tag == "!ref":
        return _Ref(loader.construct_scalar(node))  # type: ignore[arg-type]
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
        return {"_tag": tag, **value}
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    scalar = loader.construct_scalar(node)  # type: ignore[arg-type]
    return {"_tag": tag} if scalar in ("", None) else {"_tag": tag, "_value": scalar}


_TagTolerantLoader.add_multi_constructor("!", _construct_tagged)

_REF = re.compile(r"^<([^<>]+)>$")


def _resolve(value: Any, top: dict[str, Any], depth: int = 0) -> Any:
    if depth > 20:
        raise DecoderConfigError("cosyvoice.yaml: !ref cycle")
    if isinstance(value, _Ref):
        match = _REF.match(value.expression.strip())
        if not match:
            return value.expression  # an expression we do not evaluate; only a problem if the value is needed
        target: Any = top
        for part in match.group(1).replace("]", "").split("["):
            if not isinstance(target, dict) or part not in target:
                raise DecoderConfigError(f"cosyvoice.yaml: unresolved !ref <{match.group(1)}>")
            target = target[part]
        return _resolve(target, top, depth + 1)
    if isinstance(value, dict):
        return {k: _resolve(v, top, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, top, depth + 1) for v in value]
    return value


def load_yaml(path: Path) -> dict[str, Any]:
    """Parse a hyperpyyaml file into plain dicts (tags recorded under ``"_tag"``, nothing executed)."""
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_TagTolerantLoader)
    except yaml.YAMLError as error:
        raise DecoderConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise DecoderConfigError(f"{path}: expected a mapping at the top level")
    return _resolve(raw, raw)


# --- typed views ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MelConfig:
    n_fft: int = 1024
    num_mels: int = 80
    sampling_rate: int = 22050
    hop_size: int = 256
    win_size: int = 1024
    fmin: float = 0.0
    fmax: float | None = 8000.0
    center: bool = False


@dataclass(frozen=True)
class EncoderConfig:
    output_size: int = 512
    attention_heads: int = 8
    linear_units: int = 2048
    num_blocks: int = 6


@dataclass(frozen=True)
class EstimatorConfig:
    in_channels: int = 320
    out_channels: int = 80
    channels: tuple[int, ...] = (256, 256)
    attention_head_dim: int = 64
    n_blocks: int = 4
    num_mid_blocks: int = 12
    num_heads: int = 8


@dataclass(frozen=True)
class FlowConfig:
    input_size: int = 512
    output_size: int = 80
    spk_embed_dim: int = 192
    vocab_size: int = 5121
    input_frame_rate: float = 125 / 3
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    regulator_channels: int = 80
    regulator_stages: int = 4
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    inference_cfg_rate: float = 0.7
    t_scheduler: str = "cosine"
    n_timesteps: int = 10
    temperature: float = 1.0


@dataclass(frozen=True)
class HiftConfig:
    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 22050
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 8)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16)
    istft_n_fft: int = 16
    istft_hop: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_cond_channels: int = 512

    @property
    def hop_length(self) -> int:
        """Output samples per mel frame."""
        product = 1
        for rate in self.upsample_rates:
            product *= rate
        return product * self.istft_hop


@dataclass(frozen=True)
class DecoderConfig:
    flow: FlowConfig
    hift: HiftConfig
    mel: MelConfig
    sample_rate: int


# Values this implementation does not support: (section path, key, expected).
_FIXED = [
    (("flow", "encoder"), "input_layer", "linear"),
    (("flow", "encoder"), "pos_enc_layer_type", "rel_pos_espnet"),
    (("flow", "encoder"), "selfattention_layer_type", "rel_selfattn"),
    (("flow", "encoder"), "use_cnn_module", False),
    (("flow", "encoder"), "macaron_style", False),
    (("flow", "encoder"), "normalize_before", True),
    (("flow", "encoder"), "static_chunk_size", 0),
    (("flow", "encoder"), "use_dynamic_chunk", False),
    (("flow", "decoder", "estimator"), "act_fn", "gelu"),
    (("flow", "decoder", "cfm_params"), "solver", "euler"),
    (("flow", "decoder", "cfm_params"), "t_scheduler", "cosine"),
]


def _section(tree: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node: Any = tree
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and "content" in node and node.get("_tag", "").endswith("DictConfig"):
            node = node["content"]  # omegaconf.DictConfig(content: {...})
    return node if isinstance(node, dict) else {}


def _get(section: dict[str, Any], key: str, default: Any, kind: type) -> Any:
    value = section.get(key, default)
    if value is None:
        return default
    try:
        if kind is bool:
            return value if isinstance(value, bool) else str(value).lower() in ("true", "1", "yes")
        return kind(value)
    except (TypeError, ValueError) as error:
        raise DecoderConfigError(f"cosyvoice.yaml: {key}={value!r} is not a {kind.__name__}") from error


def _ints(value: Any, default: tuple[int, ...]) -> tuple[int, ...]:
    return default if value is None else tuple(int(v) for v in value)


def _nested(value: Any, default: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    return default if value is None else tuple(tuple(int(x) for x in v) for v in value)


def parse_config(tree: dict[str, Any]) -> DecoderConfig:
    """Typed decoder settings from a loaded ``cosyvoice.yaml``; raises on unsupported options."""
    problems = []
    for path, key, expected in _FIXED:
        section = _section(tree, path)
        if key in section and section[key] != expected:
            problems.append(f"{'.'.join(path)}.{key}={section[key]!r} (supported: {expected!r})")
    if problems:
        raise DecoderConfigError("cosyvoice.yaml uses options this decoder does not implement: " + "; ".join(problems))

    flow, enc = _section(tree, ("flow",)), _section(tree, ("flow", "encoder"))
    reg = _section(tree, ("flow", "length_regulator"))
    cfm = _section(tree, ("flow", "decoder", "cfm_params"))
    est = _section(tree, ("flow", "decoder", "estimator"))
    hift, f0 = _section(tree, ("hift",)), _section(tree, ("hift", "f0_predictor"))
    istft = hift.get("istft_params") or {}
    feat = _section(tree, ("feat_extractor",)) or _section(tree, ("flow", "mel_feat_conf"))
    d_flow, d_enc, d_est, d_hift, d_mel = FlowConfig(), EncoderConfig(), EstimatorConfig(), HiftConfig(), MelConfig()
    fmax = feat.get("fmax", d_mel.fmax)
    mel = MelConfig(
        n_fft=_get(feat, "n_fft", d_mel.n_fft, int),
        num_mels=_get(feat, "num_mels", d_mel.num_mels, int),
        sampling_rate=_get(feat, "sampling_rate", d_mel.sampling_rate, int),
        hop_size=_get(feat, "hop_size", d_mel.hop_size, int),
        win_size=_get(feat, "win_size", d_mel.win_size, int),
        fmin=_get(feat, "fmin", d_mel.fmin, float),
        fmax=None if fmax in (None, "null") else float(fmax),
        center=_get(feat, "center", d_mel.center, bool),
    )
    if mel.center:
        raise DecoderConfigError("cosyvoice.yaml: feat_extractor.center=True is not supported (reference: False)")
    config = DecoderConfig(
        flow=FlowConfig(
            input_size=_get(flow, "input_size", d_flow.input_size, int),
            output_size=_get(flow, "output_size", d_flow.output_size, int),
            spk_embed_dim=_get(flow, "spk_embed_dim", d_flow.spk_embed_dim, int),
            vocab_size=_get(flow, "vocab_size", d_flow.vocab_size, int),
            input_frame_rate=_get(flow, "input_frame_rate", d_flow.input_frame_rate, float),
            encoder=EncoderConfig(
                output_size=_get(enc, "output_size", d_enc.output_size, int),
                attention_heads=_get(enc, "attention_heads", d_enc.attention_heads, int),
                linear_units=_get(enc, "linear_units", d_enc.linear_units, int),
                num_blocks=_get(enc, "num_blocks", d_enc.num_blocks, int),
            ),
            regulator_channels=_get(reg, "channels", d_flow.regulator_channels, int),
            regulator_stages=len(reg.get("sampling_ratios") or [1] * d_flow.regulator_stages),
            estimator=EstimatorConfig(
                in_channels=_get(est, "in_channels", d_est.in_channels, int),
                out_channels=_get(est, "out_channels", d_est.out_channels, int),
                channels=_ints(est.get("channels"), d_est.channels),
                attention_head_dim=_get(est, "attention_head_dim", d_est.attention_head_dim, int),
                n_blocks=_get(est, "n_blocks", d_est.n_blocks, int),
                num_mid_blocks=_get(est, "num_mid_blocks", d_est.num_mid_blocks, int),
                num_heads=_get(est, "num_heads", d_est.num_heads, int),
            ),
            inference_cfg_rate=_get(cfm, "inference_cfg_rate", d_flow.inference_cfg_rate, float),
        ),
        hift=HiftConfig(
            in_channels=_get(hift, "in_channels", d_hift.in_channels, int),
            base_channels=_get(hift, "base_channels", d_hift.base_channels, int),
            nb_harmonics=_get(hift, "nb_harmonics", d_hift.nb_harmonics, int),
            sampling_rate=_get(hift, "sampling_rate", d_hift.sampling_rate, int),
            nsf_alpha=_get(hift, "nsf_alpha", d_hift.nsf_alpha, float),
            nsf_sigma=_get(hift, "nsf_sigma", d_hift.nsf_sigma, float),
            nsf_voiced_threshold=_get(hift, "nsf_voiced_threshold", d_hift.nsf_voiced_threshold, float),
            upsample_rates=_ints(hift.get("upsample_rates"), d_hift.upsample_rates),
            upsample_kernel_sizes=_ints(hift.get("upsample_kernel_sizes"), d_hift.upsample_kernel_sizes),
            istft_n_fft=int(istft.get("n_fft", d_hift.istft_n_fft)),
            istft_hop=int(istft.get("hop_len", d_hift.istft_hop)),
            resblock_kernel_sizes=_ints(hift.get("resblock_kernel_sizes"), d_hift.resblock_kernel_sizes),
            resblock_dilation_sizes=_nested(hift.get("resblock_dilation_sizes"), d_hift.resblock_dilation_sizes),
            source_resblock_kernel_sizes=_ints(
                hift.get("source_resblock_kernel_sizes"), d_hift.source_resblock_kernel_sizes
            ),
            source_resblock_dilation_sizes=_nested(
                hift.get("source_resblock_dilation_sizes"), d_hift.source_resblock_dilation_sizes
            ),
            lrelu_slope=_get(hift, "lrelu_slope", d_hift.lrelu_slope, float),
            audio_limit=_get(hift, "audio_limit", d_hift.audio_limit, float),
            f0_cond_channels=_get(f0, "cond_channels", d_hift.f0_cond_channels, int),
        ),
        mel=mel,
        sample_rate=_get(tree, "sample_rate", d_hift.sampling_rate, int),
    )
    _check_consistency(config)
    return config


def _check_consistency(config: DecoderConfig) -> None:
    flow, hift, mel = config.flow, config.hift, config.mel
    problems = []
    if flow.input_frame_rate <= 0:
        problems.append(f"flow.input_frame_rate={flow.input_frame_rate} must be > 0")
    if hift.hop_length != mel.hop_size:
        problems.append(f"hift upsampling {hift.hop_length} samples/frame != feat_extractor.hop_size {mel.hop_size}")
    if hift.sampling_rate != mel.sampling_rate:
        problems.append(f"hift.sampling_rate {hift.sampling_rate} != feat_extractor.sampling_rate {mel.sampling_rate}")
    if flow.estimator.in_channels != 4 * flow.output_size:
        problems.append(f"estimator.in_channels {flow.estimator.in_channels} != 4 x flow.output_size")
    if mel.num_mels != flow.output_size or hift.in_channels != flow.output_size:
        problems.append("feat_extractor.num_mels, flow.output_size and hift.in_channels must agree")
    if len(hift.source_resblock_kernel_sizes) != len(hift.upsample_rates):
        problems.append("hift needs one source resblock per upsampling stage")
    if problems:
        raise DecoderConfigError("cosyvoice.yaml is inconsistent: " + "; ".join(problems))


def load_config(path: Path) -> DecoderConfig:
    return parse_config(load_yaml(path))
