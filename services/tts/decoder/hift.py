"""Mel → waveform: CosyVoice's ``HiFTGenerator`` (conv F0 predictor, harmonic-plus-noise NSF source,
HiFi-GAN-style upsampling with Snake ResBlocks fed by the source's STFT, iSTFT head), fp32.

For chunked vocoding, ``vocode`` takes the cumulative sine phase at its first sample and the
absolute position of its first frame, so that a segment cut from a longer mel reproduces the
excitation (phases and noise) the whole-mel call would have produced there."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from services.tts.decoder.config import HiftConfig
from services.tts.decoder.noise import NoiseBank, uniform_phases


def _norm_except_dim0(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


class _WeightNormMixin:
    """Legacy ``torch.nn.utils.weight_norm`` parameters (``weight_g`` [d0,1,1], ``weight_v``), w = g·v/‖v‖."""

    weight_g: nn.Parameter
    weight_v: nn.Parameter

    def _setup_weight_norm(self, weight: torch.Tensor) -> None:
        self.weight_v = nn.Parameter(weight.detach().clone())
        self.weight_g = nn.Parameter(_norm_except_dim0(weight).detach().clone())

    def effective_weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / _norm_except_dim0(self.weight_v)


class WNConv1d(_WeightNormMixin, nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, padding: int = 0) -> None:
        super().__init__()
        template = nn.Conv1d(cin, cout, kernel)
        self._setup_weight_norm(template.weight)
        self.bias = nn.Parameter(template.bias.detach().clone())
        self.stride, self.dilation, self.padding = stride, dilation, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.effective_weight(), self.bias, self.stride, self.padding, self.dilation)


class WNConvTranspose1d(_WeightNormMixin, nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        template = nn.ConvTranspose1d(cin, cout, kernel, stride, padding)
        self._setup_weight_norm(template.weight)
        self.bias = nn.Parameter(template.bias.detach().clone())
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(x, self.effective_weight(), self.bias, self.stride, self.padding)


class Snake(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        return x + torch.sin(x * alpha).pow(2) / (alpha + 1e-9)


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            WNConv1d(channels, channels, kernel, dilation=d, padding=(kernel * d - d) // 2) for d in dilations
        )
        self.convs2 = nn.ModuleList(WNConv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.activations1, self.activations2, strict=True):
            x = x + c2(a2(c1(a1(x))))
        return x


class F0Predictor(nn.Module):
    """ConvRNNF0Predictor: 5 × (WN conv k3 → ELU), Linear → |·| (Hz)."""

    def __init__(self, in_channels: int, cond_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [WNConv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.condnet(mel).transpose(1, 2)).squeeze(-1).abs()


class _SourceModule(nn.Module):
    def __init__(self, harmonics: int) -> None:
        super().__init__()
        self.l_linear = nn.Linear(harmonics + 1, 1)


@dataclass
class ExcitationState:
    """Where a vocoded segment starts: absolute frame index and the cumulative phase (cycles, per
    harmonic, float64) of all samples before it."""

    start_frame: int = 0
    phase: np.ndarray | None = None


def inverse_stft(magnitude: torch.Tensor, phase: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """[B, n_fft/2+1, frames] magnitude/phase → [B, (frames-1)·hop] samples (periodic Hann,
    center=True: the inverse of ``torch.stft`` with the same settings)."""
    spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
    return torch.istft(spec, n_fft, hop, n_fft, window=torch.hann_window(n_fft, device=magnitude.device))


class HiftModel(nn.Module):
    """Parameter names follow the reference state dict (``hift.pt``)."""

    def __init__(self, config: HiftConfig) -> None:
        super().__init__()
        self.config = config
        base, rates = config.base_channels, config.upsample_rates
        spec_channels = config.istft_n_fft + 2
        self.m_source = _SourceModule(config.nb_harmonics)
        self.conv_pre = WNConv1d(config.in_channels, base, 7, padding=3)
        self.ups = nn.ModuleList(
            WNConvTranspose1d(base // 2**i, base // 2 ** (i + 1), k, u, (k - u) // 2)
            for i, (u, k) in enumerate(zip(rates, config.upsample_kernel_sizes, strict=True))
        )
        down_rates = np.cumprod([1, *rates[::-1][:-1]])[::-1]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (u, k, d) in enumerate(
            zip(down_rates, config.source_resblock_kernel_sizes, config.source_resblock_dilation_sizes, strict=True)
        ):
            width = base // 2 ** (i + 1)
            u = int(u)
            conv = (
                nn.Conv1d(spec_channels, width, 1, 1) if u == 1 else nn.Conv1d(spec_channels, width, u * 2, u, u // 2)
            )
            self.source_downs.append(conv)
            self.source_resblocks.append(ResBlock(width, k, d))
        self.resblocks = nn.ModuleList(
            ResBlock(base // 2 ** (i + 1), k, d)
            for i in range(len(rates))
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True)
        )
        self.conv_post = WNConv1d(base // 2 ** len(rates), spec_channels, 7, padding=3)
        self.f0_predictor = F0Predictor(config.in_channels, config.f0_cond_channels)

    # --- source --------------------------------------------------------------------------------

    def excitation(
        self, f0: torch.Tensor, state: ExcitationState, noise: NoiseBank, seed: int, phase_at_frame: int | None
    ) -> tuple[torch.Tensor, np.ndarray | None]:
        """SineGen + l_linear + tanh. f0 [1, frames] (Hz) → source [1, 1, frames·hop]; also the
        cumulative phase before frame ``phase_at_frame`` (absolute index) when asked."""
        c, hop = self.config, self.config.hop_length
        harmonics = c.nb_harmonics + 1
        f0_up = f0.repeat_interleave(hop, dim=1)[0].double()  # nearest upsampling, [N]
        multiples = torch.arange(1, harmonics + 1, dtype=torch.float64, device=f0.device)[:, None]
        increments = f0_up[None, :] * multiples / c.sampling_rate  # cycles per sample, [H, N]
        start = torch.zeros(harmonics, dtype=torch.float64, device=f0.device)
        if state.phase is not None:
            start = torch.from_numpy(state.phase).to(f0.device)
        cumulative = torch.cumsum(increments, dim=1) + start[:, None]
        theta = 2 * torch.pi * torch.remainder(cumulative, 1.0)
        phases = uniform_phases(seed, harmonics).to(f0.device)[:, None]
        sines = c.nsf_alpha * torch.sin(theta + phases)
        voiced = (f0_up > c.nsf_voiced_threshold).double()[None, :]
        amplitude = voiced * c.nsf_sigma + (1 - voiced) * c.nsf_alpha / 3
        first = state.start_frame * hop
        gauss = noise.take(first, first + f0_up.shape[0]).to(f0.device).double()
        waves = (sines * voiced + amplitude * gauss).float()  # [H, N]
        source = torch.tanh(self.m_source.l_linear(waves.T)).T[None]  # [1, 1, N]
        phase_out = None
        if phase_at_frame is not None:
            local = (phase_at_frame - state.start_frame) * hop
            phase_out = (start if local <= 0 else cumulative[:, local - 1]).cpu().numpy().copy()
        return source, phase_out

    # --- main path -----------------------------------------------------------------------------

    def _window(self, device: torch.device) -> torch.Tensor:
        return torch.hann_window(self.config.istft_n_fft, device=device)

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        c = self.config
        n_fft, bins = c.istft_n_fft, c.istft_n_fft // 2 + 1
        window = self._window(mel.device)
        spec = torch.stft(source[:, 0], n_fft, c.istft_hop, n_fft, window=window, return_complex=True)
        s_stft = torch.cat([spec.real, spec.imag], dim=1)
        x = self.conv_pre(mel)
        kernels = len(c.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, c.lrelu_slope))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            x = sum(self.resblocks[i * kernels + j](x) for j in range(kernels)) / kernels
        x = self.conv_post(F.leaky_relu(x))
        magnitude = torch.exp(x[:, :bins]).clamp(max=1e2)
        wav = inverse_stft(magnitude, torch.sin(x[:, bins:]), n_fft, c.istft_hop)
        return wav.clamp(-c.audio_limit, c.audio_limit)

    @torch.inference_mode()
    def vocode(
        self,
        mel: torch.Tensor,
        noise: NoiseBank,
        seed: int,
        state: ExcitationState | None = None,
        phase_at_frame: int | None = None,
    ) -> tuple[torch.Tensor, np.ndarray | None]:
        """mel float32 [1, 80, frames] → (waveform [frames·hop], phase before ``phase_at_frame``)."""
        state = state or ExcitationState()
        mel = mel.float()
        f0 = self.f0_predictor(mel)
        source, phase = self.excitation(f0, state, noise, seed, phase_at_frame)
        return self.decode(mel, source)[0], phase
