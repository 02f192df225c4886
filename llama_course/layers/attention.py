"""Causal self-attention with rotary embeddings and grouped-query heads (Llama 2, section 2.2; Ainslie et al. 2023).

In grouped-query attention (GQA), `n_heads` query heads share `n_kv_heads` key/value heads: query head `h`
reads KV head `h // (n_heads // n_kv_heads)`. Llama 1 and Llama 2 7B/13B have n_kv_heads == n_heads
(multi-head attention); Llama 2 70B has 8 KV heads for 64 query heads, an 8x smaller KV cache.

The score computation itself is a swappable backend, `ATTENTION_BACKENDS[name](q, k, v, *, offset, mask,
need_weights)`:
- q is (B, H, Tq, hd); k and v are (B, Hkv, Tk, hd): the keys of the cached tokens followed by the new ones;
- `mask=None` means causal with an offset: query i may attend key j iff j <= offset + i;
- otherwise `mask` is a bool tensor broadcastable to (B, 1, Tq, Tk), True where attending is allowed; it
  already includes causality (left padding, packed documents) and `offset` is ignored.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llama_course.layers.efficient_attention import memory_efficient_backend
from llama_course.layers.kv_cache import KVCache
from llama_course.layers.rope import apply_rope_interleaved

AttentionBackend = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, T, hd) -> (B, Hkv * n_rep, T, hd), each KV head repeated for the n_rep query heads that share it."""
    if n_rep == 1:
        return x
    return x.repeat_interleave(n_rep, dim=1)


def causal_mask(q_len: int, kv_len: int, offset: int, device: torch.device | None = None) -> torch.Tensor:
    """(q_len, kv_len) bool: query i (at absolute index offset + i) may attend key j iff j <= offset + i."""
    rows = torch.arange(q_len, device=device)[:, None] + offset
    return torch.arange(kv_len, device=device)[None, :] <= rows


def eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    offset: int = 0,
    mask: torch.Tensor | None = None,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The plain formula, softmax(q k^T / sqrt(hd)) v, with the (Tq, Tk) score matrix in float32 memory."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    compute = torch.promote_types(q.dtype, torch.float32)  # float32 scores and softmax, float64 stays float64
    scores = (q.to(compute) @ k.to(compute).transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if mask is None:
        mask = causal_mask(q.shape[2], k.shape[2], offset, q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1).type_as(q)
    return weights @ v, (weights if need_weights else None)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    offset: int = 0,
    mask: torch.Tensor | None = None,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """PyTorch's fused `scaled_dot_product_attention` (flash / memory-efficient kernels where available)."""
    if need_weights:
        raise ValueError("attention_backend='sdpa' cannot return attention weights; use attention_backend='eager'")
    q_len, kv_len = q.shape[2], k.shape[2]
    is_causal = False
    if mask is None and q_len > 1:
        if offset == 0 and q_len == kv_len:
            is_causal = True
        else:
            mask = causal_mask(q_len, kv_len, offset, q.device)
    gqa = q.shape[1] != k.shape[1]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=gqa)
    return out, None


ATTENTION_BACKENDS: dict[str, AttentionBackend] = {
    "eager": eager_attention,
    "sdpa": sdpa_attention,
    "memory_efficient": memory_efficient_backend,  # Llama 1's xformers-style kernel, rebuilt in chapter 6
}


class Attention(nn.Module):
    """Multi-head (or grouped-query) self-attention with RoPE on queries and keys, no biases."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, backend: str = "sdpa") -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = dim // n_heads
        self.backend = backend
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        *,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, dim); cos/sin: (B or 1, 1, T, head_dim/2), or None for no rotation (a model without RoPE).
        Returns (B, T, dim) and optional weights."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if cos is not None:
            q, k = apply_rope_interleaved(q, cos, sin), apply_rope_interleaved(k, cos, sin)
        offset = 0
        if cache is not None:
            offset = cache.length
            k, v = cache.update(layer_idx, k, v)  # (B, Hkv, offset + T, hd)
        out, weights = ATTENTION_BACKENDS[self.backend](q, k, v, offset=offset, mask=mask, need_weights=need_weights)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1)), weights
