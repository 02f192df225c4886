"""RMSNorm, the normalisation Llama applies before every sub-layer (Llama 1, section 2.2; Zhang & Sennrich 2019).

Unlike LayerNorm it neither subtracts the mean nor adds a bias: it only rescales each vector to unit root
mean square, then multiplies by a learned gain that starts at 1. `make_norm` also builds the LayerNorm
(Ba et al., 2016: subtract the mean, divide by the standard deviation, learned gain and bias) that RMSNorm
replaced, for the ablation of chapter 2.
"""

import torch
from torch import nn


class RMSNorm(nn.Module):
    """`x * rsqrt(mean(x^2) + eps) * weight`, computed in float32 (float64 stays float64), cast back."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Low-precision squares overflow or lose digits: reduce in (at least) float32, as Meta's reference does.
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


NORM_TYPES = ("rmsnorm", "layernorm")  # Llama's choice first


def make_norm(norm_type: str, dim: int, eps: float) -> nn.Module:
    """An RMSNorm, or a LayerNorm with gain and bias, over the last dimension of width `dim`."""
    if norm_type == "rmsnorm":
        return RMSNorm(dim, eps)
    if norm_type == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"norm_type={norm_type!r} is unknown; choose one of {NORM_TYPES}")
