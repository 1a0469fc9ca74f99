"""The flow-matching vector field: Matcha/CosyVoice ``ConditionalDecoder`` (1-D U-Net of ResNet
blocks and diffusers-style transformer blocks; attention without a mask, as Step-Audio runs it)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from services.tts.decoder.config import EstimatorConfig

_GROUPS = 8


class Block1D(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(dim_in, dim_out, 3, padding=1), nn.GroupNorm(_GROUPS, dim_out), nn.Mish())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.block(x * mask) * mask


class ResnetBlock1D(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, time_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_dim, dim_out))
        self.block1 = Block1D(dim_in, dim_out)
        self.block2 = Block1D(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim_in, dim_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask) + self.mlp(temb)[:, :, None]
        h = self.block2(h, mask)
        return h + self.res_conv(x * mask)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x)))
        return self.to_out[0](out.transpose(1, 2).reshape(batch, length, -1))


class _GeluProj(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(_GeluProj(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """diffusers BasicTransformerBlock (layer_norm, self-attention only, GELU feed-forward)."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = _Attention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5)
        self.ff = _FeedForward(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        return x + self.ff(self.norm3(x))


class _Downsample(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Upsample(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _TimeMlp(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim_in, dim_out)
        self.linear_2 = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


def timestep_sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Matcha SinusoidalPosEmb (scale 1000), [sin | cos]; 1000·t in t's dtype, the rest in fp32,
    cast back to t's dtype (as the reference computes it)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    arg = (1000 * t)[:, None].float() * freqs[None]
    return torch.cat([arg.sin(), arg.cos()], dim=-1).to(t.dtype)


def _transformers(dim: int, config: EstimatorConfig) -> nn.ModuleList:
    return nn.ModuleList(
        TransformerBlock(dim, config.num_heads, config.attention_head_dim) for _ in range(config.n_blocks)
    )


def _run(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    x = x.transpose(1, 2)
    for block in blocks:
        x = block(x)
    return x.transpose(1, 2)


class ConditionalDecoder(nn.Module):
    def __init__(self, config: EstimatorConfig) -> None:
        super().__init__()
        channels = config.channels
        self.time_dim_in = config.in_channels
        time_dim = channels[0] * 4
        self.time_mlp = _TimeMlp(config.in_channels, time_dim)
        self.down_blocks = nn.ModuleList()
        output = config.in_channels
        for i, width in enumerate(channels):
            last = i == len(channels) - 1
            down = nn.Conv1d(width, width, 3, padding=1) if last else _Downsample(width)
            self.down_blocks.append(
                nn.ModuleList([ResnetBlock1D(output, width, time_dim), _transformers(width, config), down])
            )
            output = width
        self.mid_blocks = nn.ModuleList(
            nn.ModuleList([ResnetBlock1D(channels[-1], channels[-1], time_dim), _transformers(channels[-1], config)])
            for _ in range(config.num_mid_blocks)
        )
        reversed_channels = (*channels[::-1], channels[0])
        self.up_blocks = nn.ModuleList()
        for i in range(len(reversed_channels) - 1):
            width_in, width = reversed_channels[i] * 2, reversed_channels[i + 1]
            last = i == len(reversed_channels) - 2
            up = nn.Conv1d(width, width, 3, padding=1) if last else _Upsample(width)
            self.up_blocks.append(
                nn.ModuleList([ResnetBlock1D(width_in, width, time_dim), _transformers(width, config), up])
            )
        self.final_block = Block1D(channels[-1], channels[-1])
        self.final_proj = nn.Conv1d(channels[-1], config.out_channels, 1)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
    ) -> torch.Tensor:
        """x, mu, cond [B, 80, M]; mask [B, 1, M]; t [B]; spks [B, 80] → velocity [B, 80, M]."""
        temb = self.time_mlp(timestep_sinusoid(t, self.time_dim_in))
        spk = spks[:, :, None].expand(-1, -1, x.shape[-1])
        x = torch.cat([x, mu, spk, cond.to(x.dtype)], dim=1)
        skips, masks = [], [mask]
        for resnet, transformers, down in self.down_blocks:
            level_mask = masks[-1]
            x = _run(transformers, resnet(x, level_mask, temb))
            skips.append(x)
            x = down(x * level_mask)
            masks.append(level_mask[:, :, ::2])
        masks = masks[:-1]
        mid_mask = masks[-1]
        for resnet, transformers in self.mid_blocks:
            x = _run(transformers, resnet(x, mid_mask, temb))
        up_mask = mid_mask
        for resnet, transformers, up in self.up_blocks:
            up_mask, skip = masks.pop(), skips.pop()
            x = torch.cat([x[:, :, : skip.shape[-1]], skip], dim=1)
            x = _run(transformers, resnet(x, up_mask, temb))
            x = up(x * up_mask)
        x = self.final_block(x, up_mask)
        return self.final_proj(x * up_mask) * mask
