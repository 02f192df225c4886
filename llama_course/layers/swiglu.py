"""The SwiGLU feed-forward network (Llama 1, section 2.2; Shazeer 2020, "GLU Variants Improve Transformer")."""

import torch
import torch.nn.functional as F
from torch import nn


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """Hidden width of the SwiGLU FFN.

    A ReLU FFN of width 4d has 8d^2 weights; SwiGLU has three matrices, so Llama scales the width by 2/3 to
    keep 3 * d * (2/3 * 4d) = 8d^2, optionally multiplies it (Llama 2 70B: 1.3), then rounds UP to a multiple
    of `multiple_of` for efficient matmuls. For d=4096, multiple_of=256 this gives 11008.
    """
    if dim <= 0 or multiple_of <= 0:
        raise ValueError(f"dim={dim} and multiple_of={multiple_of} must both be positive")
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class FeedForward(nn.Module):
    """`w2(silu(w1 x) * w3 x)`: a gate (w1) through SiLU multiplies a linear value (w3); w2 projects back."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # value
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
