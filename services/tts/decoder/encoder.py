"""The flow's token encoder: a pre-LN Conformer without macaron/conv modules, ESPnet relative
positional self-attention (CosyVoice ``ConformerEncoder`` with input_layer 'linear',
pos_enc_layer_type 'rel_pos_espnet', selfattention_layer_type 'rel_selfattn'). Full context, B = 1."""

from __future__ import annotations

import math

import torch
from torch import nn

from services.tts.decoder.config import EncoderConfig


def relative_positions(length: int, dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[1, 2T-1, dim] sinusoids of relative positions T-1 … -(T-1) (EspnetRelPositionalEncoding's
    centred slice): even channels sin(r·ω_m), odd channels cos(r·ω_m), ω_m = 10000^(-2m/dim)."""
    positions = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device)[:, None]
    omega = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / dim))
    table = torch.zeros(2 * length - 1, dim, dtype=torch.float32, device=device)
    table[:, 0::2] = torch.sin(positions * omega)
    table[:, 1::2] = torch.cos(positions * omega)
    return table[None].to(dtype)


class RelPositionAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.d_k = heads, dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.d_k))

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.linear_q(x).view(batch, length, self.heads, self.d_k)  # [B, T, H, d]
        k = self.linear_k(x).view(batch, length, self.heads, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(batch, length, self.heads, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(1, -1, self.heads, self.d_k).transpose(1, 2)  # [1, H, 2T-1, d]
        ac = (q + self.pos_bias_u).transpose(1, 2) @ k.transpose(-2, -1)  # [B, H, T, T]
        bd_raw = (q + self.pos_bias_v).transpose(1, 2) @ p.transpose(-2, -1)  # [B, H, T, 2T-1]
        # rel_shift: BD[i, j] = BD_raw[i, (T-1) - i + j] (relative position i - j)
        i = torch.arange(length, device=x.device)
        index = (length - 1 - i[:, None] + i[None, :]).expand(batch, self.heads, length, length)
        bd = torch.gather(bd_raw, -1, index)
        scores = (ac + bd) / math.sqrt(self.d_k)
        attention = torch.softmax(scores, dim=-1)
        out = (attention @ v).transpose(1, 2).reshape(batch, length, -1)
        return self.linear_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(torch.nn.functional.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.self_attn = RelPositionAttention(dim, heads)
        self.feed_forward = FeedForward(dim, hidden)
        self.norm_ff = nn.LayerNorm(dim, eps=1e-5)
        self.norm_mha = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), pos_emb)
        return x + self.feed_forward(self.norm_ff(x))


class _LinearEmbed(nn.Module):
    def __init__(self, input_size: int, dim: int) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Linear(input_size, dim), nn.LayerNorm(dim, eps=1e-5))


class ConformerEncoder(nn.Module):
    def __init__(self, input_size: int, config: EncoderConfig) -> None:
        super().__init__()
        dim = config.output_size
        self.dim = dim
        self.embed = _LinearEmbed(input_size, dim)
        self.after_norm = nn.LayerNorm(dim, eps=1e-5)
        self.encoders = nn.ModuleList(
            ConformerLayer(dim, config.attention_heads, config.linear_units) for _ in range(config.num_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[1, T, input_size] → [1, T, output_size]."""
        x = self.embed.out(x) * math.sqrt(self.dim)
        pos_emb = relative_positions(x.shape[1], self.dim, x.dtype, x.device)
        for layer in self.encoders:
            x = layer(x, pos_emb)
        return self.after_norm(x)
