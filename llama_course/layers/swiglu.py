"""The SwiGLU feed-forward network (Llama 1, section 2.2; Shazeer 2020, "GLU Variants Improve Transformer").

For chapter 3's ablation, `make_feed_forward` also builds the two-matrix FFN that SwiGLU replaced,
`w2(act(w1 x))` with GELU or ReLU, at the width that gives it as many weights as the SwiGLU FFN.
"""

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


FFN_ACTIVATIONS = ("swiglu", "gelu", "relu")  # Llama's choice first


def non_gated_hidden_dim(gated_hidden_dim: int) -> int:
    """Width of a two-matrix FFN with the weights of a SwiGLU FFN: 2 * d * (3h/2) = 3 * d * h (h even: exact)."""
    return 3 * gated_hidden_dim // 2


class FeedForward(nn.Module):
    """`w2(silu(w1 x) * w3 x)`: a gate (w1) through SiLU multiplies a linear value (w3); w2 projects back."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # value
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class NonGatedFeedForward(nn.Module):
    """`w2(act(w1 x))`, the FFN of the original transformer (ReLU) and of GPT-2 (GELU)."""

    def __init__(self, dim: int, hidden_dim: int, activation: str) -> None:
        super().__init__()
        self.activation = {"gelu": F.gelu, "relu": F.relu}[activation]
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.activation(self.w1(x)))


def make_feed_forward(activation: str, dim: int, hidden_dim: int) -> nn.Module:
    """The SwiGLU FFN, or a two-matrix GELU / ReLU one, of width `hidden_dim`."""
    if activation == "swiglu":
        return FeedForward(dim, hidden_dim)
    if activation in FFN_ACTIVATIONS:
        return NonGatedFeedForward(dim, hidden_dim, activation)
    raise ValueError(f"ffn_activation={activation!r} is unknown; choose one of {FFN_ACTIVATIONS}")
