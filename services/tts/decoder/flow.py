"""Tokens → mel: Step-Audio's ``MaskedDiffWithXvec`` (token embedding, Conformer encoder,
interpolating length regulator, conditional flow matching solved with Euler + cosine schedule + CFG)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from services.tts.decoder.config import FlowConfig
from services.tts.decoder.encoder import ConformerEncoder
from services.tts.decoder.estimator import ConditionalDecoder


def cosine_schedule(n_timesteps: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """t_k = 1 - cos(π/2 · k/n), k = 0..n, computed in ``dtype`` as the reference does (bf16 there)."""
    t = torch.linspace(0, 1, n_timesteps + 1, dtype=dtype)
    return 1 - torch.cos(t * 0.5 * torch.pi)


def mel_frames(tokens: int, input_frame_rate: float, sample_rate: int = 22050, hop: int = 256) -> int:
    """The reference's target mel length: int(T / input_frame_rate * 22050 / 256)."""
    return int(tokens / input_frame_rate * sample_rate / hop)


class InterpolateRegulator(nn.Module):
    def __init__(self, channels: int, stages: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(stages):
            layers += [nn.Conv1d(channels, channels, 3, 1, 1), nn.GroupNorm(1, channels), nn.Mish()]
        layers.append(nn.Conv1d(channels, channels, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(
        self, prompt: torch.Tensor, target: torch.Tensor, prompt_frames: int, target_frames: int
    ) -> torch.Tensor:
        """prompt [1, T1, C], target [1, T2, C] → [1, M1 + M2, C] (each part linearly resampled to its
        own length, then one conv stack over the concatenation)."""
        parts = [F.interpolate(target.transpose(1, 2), size=target_frames, mode="linear")]
        if prompt.shape[1] > 0 and prompt_frames > 0:
            parts.insert(0, F.interpolate(prompt.transpose(1, 2), size=prompt_frames, mode="linear"))
        return self.model(torch.cat(parts, dim=2)).transpose(1, 2)


class _Cfm(nn.Module):
    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        self.estimator = ConditionalDecoder(config.estimator)


class FlowModel(nn.Module):
    """Parameter names follow the reference state dict (``flow.pt``)."""

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        self.config = config
        self.input_embedding = nn.Embedding(config.vocab_size, config.input_size)
        self.spk_embed_affine_layer = nn.Linear(config.spk_embed_dim, config.output_size)
        self.encoder = ConformerEncoder(config.input_size, config.encoder)
        self.encoder_proj = nn.Linear(config.encoder.output_size, config.output_size)
        self.decoder = _Cfm(config)
        self.length_regulator = InterpolateRegulator(config.regulator_channels, config.regulator_stages)

    def conditioning(
        self, tokens: torch.Tensor, prompt_tokens: torch.Tensor, prompt_frames: int, target_frames: int
    ) -> torch.Tensor:
        """μ [1, 80, M1 + M2] for the prompt + target tokens (int64 [1, T])."""
        joined = torch.cat([prompt_tokens, tokens], dim=1).clamp(min=0)
        h = self.encoder_proj(self.encoder(self.input_embedding(joined)))
        prompt_len = prompt_tokens.shape[1]
        mu = self.length_regulator(h[:, :prompt_len], h[:, prompt_len:], prompt_frames, target_frames)
        return mu.transpose(1, 2)

    def speaker(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.spk_embed_affine_layer(F.normalize(embedding, p=2, dim=1, eps=1e-12))

    @torch.inference_mode()
    def inference(
        self,
        tokens: torch.Tensor,
        prompt_tokens: torch.Tensor,
        prompt_mel: torch.Tensor,
        embedding: torch.Tensor,
        target_frames: int,
        noise: torch.Tensor,
        n_timesteps: int | None = None,
        cfg_rate: float | None = None,
    ) -> torch.Tensor:
        """Mel [1, 80, target_frames] (float32) for ``tokens`` [1, T2].

        prompt_mel [1, M1, 80]; embedding [1, 192]; noise [1, 80, M1 + target_frames] (float32,
        scaled by the temperature here). Runs in the parameters' dtype."""
        dtype = self.input_embedding.weight.dtype
        prompt_frames = prompt_mel.shape[1]
        total = prompt_frames + target_frames
        if noise.shape[-1] != total:
            raise ValueError(f"noise has {noise.shape[-1]} frames, expected {total}")
        spks = self.speaker(embedding.to(dtype))
        mu = self.conditioning(tokens, prompt_tokens, prompt_frames, target_frames)
        cond = torch.zeros(1, self.config.output_size, total, dtype=dtype, device=mu.device)
        cond[:, :, :prompt_frames] = prompt_mel.to(dtype).transpose(1, 2)
        mask = torch.ones(1, 1, total, dtype=dtype, device=mu.device)
        x = (noise.to(mu.device) * self.config.temperature).to(dtype)
        x = self.solve(x, mu, mask, spks, cond, n_timesteps or self.config.n_timesteps, cfg_rate)
        return x[:, :, prompt_frames:].float()

    def solve(
        self,
        x: torch.Tensor,
        mu: torch.Tensor,
        mask: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        n_timesteps: int,
        cfg_rate: float | None = None,
    ) -> torch.Tensor:
        """Euler over the cosine schedule with classifier-free guidance: v = (1+λ)·v_c − λ·v_u."""
        rate = self.config.inference_cfg_rate if cfg_rate is None else cfg_rate
        t_span = cosine_schedule(n_timesteps, x.dtype).to(x.device)
        estimator = self.decoder.estimator
        mask2 = torch.cat([mask, mask])
        mu2 = torch.cat([mu, torch.zeros_like(mu)])
        spks2 = torch.cat([spks, torch.zeros_like(spks)])
        cond2 = torch.cat([cond, torch.zeros_like(cond)])
        t, dt = t_span[0:1], t_span[1] - t_span[0]
        for step in range(1, len(t_span)):
            velocity = estimator(torch.cat([x, x]), mask2, mu2, torch.cat([t, t]), spks2, cond2)
            conditional, unconditional = velocity.chunk(2)
            x = x + dt * ((1.0 + rate) * conditional - rate * unconditional)
            t = t + dt
            if step < len(t_span) - 1:
                dt = t_span[step + 1] - t
        return x


def count_parameters(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
