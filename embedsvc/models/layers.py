"""Shared building blocks for embedsvc's own model families.

GResNet's split normalization lives here: `SNConv` normalizes a convolution's *input* channels with
statistics only (no affine) and applies a learnable per-channel `Affine` to its *output* channels.
Both are diagonal maps at inference, so `SNConv.fold` turns the unit into one biased `nn.Conv2d`;
`MeanPad` keeps that fold exact at the borders of padded convolutions.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Affine", "MeanPad", "SNConv"]


class Affine(nn.Module):
    """Learnable per-channel scale and shift: the affine half of a split BatchNorm.

    Kept as its own module (rather than a BatchNorm with `affine=True`) because it sits *after* the
    convolution, on the output channels, while the statistics half sits before it.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))  # gamma
        self.bias = nn.Parameter(torch.zeros(channels))  # beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}"


class MeanPad(nn.Module):
    """Pad each channel with its own constant (a folded norm's running mean).

    An `SNConv` zero-pads the *normalized* input, which is the same as padding the raw input with the
    running mean. After folding the norm into the convolution, this module supplies that padding so the
    folded (unpadded) convolution is exact for every input size, strided or not, odd or even.
    Values are copied, never computed, so the padding itself adds no rounding error.
    """

    def __init__(self, value: torch.Tensor, padding: int) -> None:
        super().__init__()
        self.padding = int(padding)
        self.register_buffer("value", value.detach().clone().reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        if p == 0:
            return x
        n, c, h, w = x.shape
        out = x.new_empty((n, c, h + 2 * p, w + 2 * p))
        out[:, :, p : p + h, p : p + w] = x
        v = self.value.to(dtype=x.dtype).view(1, c, 1, 1)
        out[:, :, :p, :] = v
        out[:, :, p + h :, :] = v
        out[:, :, p : p + h, :p] = v
        out[:, :, p : p + h, p + w :] = v
        return out

    def extra_repr(self) -> str:
        return f"channels={self.value.numel()}, padding={self.padding}"


class SNConv(nn.Module):
    """Split-normalized convolution: BatchNorm2d(cin, affine=False) -> Conv2d(no bias) -> Affine(cout).

    This is GResNet's replacement for conv -> BatchNorm: normalizing the input instead of the output
    lets the statistics and the affine fold into a single biased convolution for serving.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_chs, affine=False)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
        self.affine = Affine(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.affine(self.conv(self.norm(x)))

    @torch.no_grad()
    def fold(self, exact_border: bool = True) -> nn.Module:
        """Return an equivalent inference module: a biased Conv2d, preceded by `MeanPad` when padded.

        W' = diag(gamma) W diag(1/s) and b' = gamma * (b - sum(W * mu / s)) + beta, with s the running
        std and mu the running mean, computed in float64 and cast back to the conv's dtype once.
        `exact_border=False` keeps the conv's zero padding instead of mean padding; that is the naive fold,
        wrong at the borders, and exists only so tests can show the correction matters.
        """
        norm, conv, affine = self.norm, self.conv, self.affine
        if norm.running_mean is None or norm.running_var is None:
            raise ValueError("SNConv.fold needs running statistics (track_running_stats=True)")
        dtype, device = conv.weight.dtype, conv.weight.device
        w = conv.weight.detach().double()
        mu = norm.running_mean.detach().double()
        inv_s = torch.rsqrt(norm.running_var.detach().double() + norm.eps)
        gamma = affine.weight.detach().double()
        beta = affine.bias.detach().double()
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(gamma)

        w_in = w * inv_s.view(1, -1, 1, 1)  # W diag(1/s)
        new_w = gamma.view(-1, 1, 1, 1) * w_in
        new_b = gamma * (b - (w_in * mu.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))) + beta

        padding = conv.padding
        pad = padding[0] if isinstance(padding, tuple) else padding
        if isinstance(padding, tuple) and len(set(padding)) != 1:
            raise ValueError(f"SNConv.fold supports symmetric padding only, got {padding}")
        mean_pad = exact_border and pad > 0
        folded = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=0 if mean_pad else conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=True,
            device=device,
            dtype=dtype,
        )
        folded.weight.copy_(new_w.to(dtype))
        folded.bias.copy_(new_b.to(dtype))
        if not mean_pad:
            return folded
        return nn.Sequential(MeanPad(norm.running_mean.detach().to(dtype), int(pad)), folded)
