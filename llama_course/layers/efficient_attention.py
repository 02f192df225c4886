"""Memory-efficient causal attention: a tiled online softmax with a backward that recomputes.

Llama 1 (Touvron et al. 2023, section 2.4) trains with the causal attention of the xformers library, built on
Rabe & Staats (2021, "Self-attention does not need O(n^2) memory") and the backward of FlashAttention
(Dao et al. 2022). Two ideas make it cheap:

1. The attention weights softmax(q k^T / sqrt(d)) are never stored. Keys and values are visited block by
   block and the softmax is computed "online": a running row maximum m, a running normaliser l and a
   running weighted sum of values are rescaled by exp(m_old - m_new) whenever a larger score appears.
   The forward keeps only q, k, v, the output and one number per query row, the log-sum-exp
   lse = m + log(l); the backward recomputes each block of probabilities p = exp(s - lse) from them.
2. Blocks of scores that lie entirely above the causal diagonal are skipped: they are never computed.

Grouped-query attention (Llama 2, section 2.2) is handled without repeating keys and values: the `group`
query heads that share a key/value head are laid out as extra query rows of that head, so each block
product is a plain (rows, head_dim) x (head_dim, keys) matmul.

The loops are written in PyTorch operations to be read, not to be fast: on a CPU they beat the eager backend
from T = 1024 on, but on a GPU every block costs a few kernel launches and PyTorch's fused
`scaled_dot_product_attention` (the `sdpa` backend, the same algorithm in one kernel) is far faster.
"""

import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

DEFAULT_BLOCK_SIZE = 128


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores, softmax statistics and sums are kept in float32 (float64 for float64 inputs)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def queries_as_rows(q: Tensor, n_kv_heads: int) -> Tensor:
    """(B, H, Tq, hd) -> (B, Hkv, Tq * group, hd); row r holds query position r // group, head r % group."""
    batch, n_heads, tq, head_dim = q.shape
    group = n_heads // n_kv_heads
    return q.reshape(batch, n_kv_heads, group, tq, head_dim).transpose(2, 3).reshape(
        batch, n_kv_heads, tq * group, head_dim
    )


def rows_as_queries(rows: Tensor, n_heads: int) -> Tensor:
    """Inverse of `queries_as_rows`: (B, Hkv, Tq * group, ...) -> (B, H, Tq, ...)."""
    batch, n_kv_heads, n_rows = rows.shape[:3]
    group = n_heads // n_kv_heads
    tail = rows.shape[3:]
    grouped = rows.reshape(batch, n_kv_heads, n_rows // group, group, *tail).transpose(2, 3)
    return grouped.reshape(batch, n_heads, n_rows // group, *tail)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, offset: int, mask: Tensor | None, block_size: int) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be 4-d (batch, heads, seq, head_dim); got shapes {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k shape {tuple(k.shape)} differs from v shape {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q shape {tuple(q.shape)} and k shape {tuple(k.shape)} differ in batch or head_dim")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"n_heads={q.shape[1]} is not divisible by n_kv_heads={k.shape[1]}")
    if not (q.dtype == k.dtype == v.dtype) or not q.dtype.is_floating_point:
        raise ValueError(f"q, k, v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be a positive integer")
    if offset < 0:
        raise ValueError(f"offset={offset} must be >= 0 (it counts the cached tokens before the queries)")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = may attend); got dtype {mask.dtype}")
        target = (q.shape[0], 1, q.shape[2], k.shape[2])
        try:
            torch.broadcast_shapes(mask.shape, target)
        except RuntimeError as error:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not broadcast to {target}") from error


def _expand_mask(mask: Tensor | None, q: Tensor, k: Tensor) -> Tensor | None:
    """A view of `mask` as (B, 1, Tq, Tk), so that blocks can be sliced from it."""
    return None if mask is None else mask.expand(q.shape[0], 1, q.shape[2], k.shape[2])


def key_blocks(
    q_start: int,
    q_end: int,
    group: int,
    tk: int,
    *,
    offset: int,
    mask: Tensor | None,
    block_size: int,
    device: torch.device,
) -> Iterator[tuple[int, int, Tensor | None]]:
    """The key blocks that query positions [q_start, q_end) may see, as (k_start, k_end, allowed).

    `allowed` is None when every (row, key) pair of the block is visible, else a bool tensor
    broadcastable to (B, Hkv, rows, keys). Blocks without a visible pair are not yielded: with the causal
    rule (mask None) the loop stops before the first key after position offset + q_end - 1; with an
    explicit `mask` broadcast to (B, 1, Tq, Tk) a block whose slice holds no True is skipped.
    """
    key_limit = tk if mask is not None else min(tk, offset + q_end)
    for k_start in range(0, key_limit, block_size):
        k_end = min(k_start + block_size, key_limit)
        if mask is None:
            if k_end - 1 <= offset + q_start:
                yield k_start, k_end, None
                continue
            # (bq * group,) query positions of the rows, (bk,) key positions
            query_pos = torch.arange(q_start, q_end, device=device).repeat_interleave(group)
            key_pos = torch.arange(k_start, k_end, device=device)
            yield k_start, k_end, key_pos[None, :] <= offset + query_pos[:, None]
            continue
        block = mask[:, :, q_start:q_end, k_start:k_end]
        if not bool(block.any()):
            continue
        if bool(block.all()):
            yield k_start, k_end, None
            continue
        # (Bm, 1, bq, bk) -> (Bm, 1, bq * group, bk): each query position covers `group` rows
        rows = block.unsqueeze(3).expand(*block.shape[:3], group, block.shape[3])
        yield k_start, k_end, rows.reshape(block.shape[0], 1, -1, block.shape[3])


def blockwise_attention_forward(
    q_rows: Tensor, k: Tensor, v: Tensor, *, group: int, offset: int, mask: Tensor | None, block_size: int
) -> tuple[Tensor, Tensor]:
    """Online-softmax forward on pre-scaled query rows (B, Hkv, Tq * group, hd), all in the accumulation dtype.

    Returns the output rows (B, Hkv, R, hd) and the log-sum-exp of every row (B, Hkv, R); a row that may
    attend no key gets output 0 and lse -inf.
    """
    n_rows, tk = q_rows.shape[2], k.shape[2]
    out = torch.empty_like(q_rows)
    lse = torch.empty(q_rows.shape[:3], dtype=q_rows.dtype, device=q_rows.device)
    for q_start in range(0, n_rows // group, block_size):
        q_end = min(q_start + block_size, n_rows // group)
        rows = slice(q_start * group, q_end * group)
        q_block = q_rows[:, :, rows]  # (B, Hkv, r, hd)
        row_max = torch.full(q_block.shape[:3], -math.inf, dtype=q_rows.dtype, device=q_rows.device)
        row_sum = torch.zeros_like(row_max)
        acc = torch.zeros_like(q_block)
        blocks = key_blocks(
            q_start, q_end, group, tk, offset=offset, mask=mask, block_size=block_size, device=q_rows.device
        )
        for k_start, k_end, allowed in blocks:
            scores = q_block @ k[:, :, k_start:k_end].transpose(-1, -2)  # (B, Hkv, r, bk)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, -math.inf)
            new_max = torch.maximum(row_max, scores.amax(dim=-1))
            # rows that have seen no visible key yet keep max -inf; shift them by 0 to avoid inf - inf
            shift = new_max.masked_fill(new_max == -math.inf, 0.0)
            probs = torch.exp(scores - shift.unsqueeze(-1))
            rescale = torch.exp(row_max - shift)
            row_sum = row_sum * rescale + probs.sum(dim=-1)
            acc = acc * rescale.unsqueeze(-1) + probs @ v[:, :, k_start:k_end]
            row_max = new_max
        out[:, :, rows] = acc / row_sum.masked_fill(row_sum == 0, 1.0).unsqueeze(-1)
        lse[:, :, rows] = row_max + torch.log(row_sum)
    return out, lse


def blockwise_attention_backward(
    q_rows: Tensor,
    k: Tensor,
    v: Tensor,
    out_rows: Tensor,
    lse: Tensor,
    grad_out_rows: Tensor,
    *,
    group: int,
    offset: int,
    mask: Tensor | None,
    block_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq_rows, dk, dv) for pre-scaled query rows, recomputing p = exp(s - lse) block by block.

    With dP = dO v^T and D = rowsum(dO * O), the softmax backward is dS = P * (dP - D) (Dao et al. 2022,
    appendix B); then dq = dS k, dk = dS^T q, dv = P^T dO, each summed over the visited blocks only.
    """
    n_rows, tk = q_rows.shape[2], k.shape[2]
    delta = (grad_out_rows * out_rows).sum(dim=-1)  # (B, Hkv, R)
    lse_shift = lse.masked_fill(lse == -math.inf, 0.0)
    grad_q = torch.zeros_like(q_rows)
    grad_k = torch.zeros_like(k)
    grad_v = torch.zeros_like(v)
    for q_start in range(0, n_rows // group, block_size):
        q_end = min(q_start + block_size, n_rows // group)
        rows = slice(q_start * group, q_end * group)
        q_block, grad_out_block = q_rows[:, :, rows], grad_out_rows[:, :, rows]
        blocks = key_blocks(
            q_start, q_end, group, tk, offset=offset, mask=mask, block_size=block_size, device=q_rows.device
        )
        for k_start, k_end, allowed in blocks:
            keys = slice(k_start, k_end)
            scores = q_block @ k[:, :, keys].transpose(-1, -2)  # (B, Hkv, r, bk)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, -math.inf)
            probs = torch.exp(scores - lse_shift[:, :, rows].unsqueeze(-1))
            grad_v[:, :, keys] += probs.transpose(-1, -2) @ grad_out_block
            grad_probs = grad_out_block @ v[:, :, keys].transpose(-1, -2)
            grad_scores = probs * (grad_probs - delta[:, :, rows].unsqueeze(-1))
            grad_q[:, :, rows] += grad_scores @ k[:, :, keys]
            grad_k[:, :, keys] += grad_scores.transpose(-1, -2) @ q_block
    return grad_q, grad_k, grad_v


def attention_forward_with_lse(
    q: Tensor, k: Tensor, v: Tensor, *, offset: int, mask: Tensor | None, block_size: int
) -> tuple[Tensor, Tensor]:
    """The tiled forward on (B, H, Tq, hd) queries: the output (q's dtype) and the row log-sum-exp (B, Hkv, Tq * group).

    `mask`, when given, is broadcastable to (B, 1, Tq, Tk).
    """
    mask = _expand_mask(mask, q, k)
    n_heads, n_kv_heads = q.shape[1], k.shape[1]
    acc_dtype = accumulation_dtype(q.dtype)
    # autocast would run the block products in bfloat16: the accumulation dtype is chosen here instead
    with torch.autocast(q.device.type, enabled=False):
        q_rows = queries_as_rows(q, n_kv_heads).to(acc_dtype) * q.shape[-1] ** -0.5
        out_rows, lse = blockwise_attention_forward(
            q_rows,
            k.to(acc_dtype),
            v.to(acc_dtype),
            group=n_heads // n_kv_heads,
            offset=offset,
            mask=mask,
            block_size=block_size,
        )
    return rows_as_queries(out_rows.to(q.dtype), n_heads).contiguous(), lse


def attention_backward_from_lse(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    grad_out: Tensor,
    *,
    offset: int,
    mask: Tensor | None,
    block_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv) in the input dtypes, from what `attention_forward_with_lse` returned."""
    mask = _expand_mask(mask, q, k)
    n_heads, n_kv_heads = q.shape[1], k.shape[1]
    acc_dtype = accumulation_dtype(q.dtype)
    scale = q.shape[-1] ** -0.5
    with torch.autocast(q.device.type, enabled=False):
        grad_q_rows, grad_k, grad_v = blockwise_attention_backward(
            queries_as_rows(q, n_kv_heads).to(acc_dtype) * scale,
            k.to(acc_dtype),
            v.to(acc_dtype),
            queries_as_rows(out, n_kv_heads).to(acc_dtype),
            lse,
            queries_as_rows(grad_out, n_kv_heads).to(acc_dtype),
            group=n_heads // n_kv_heads,
            offset=offset,
            mask=mask,
            block_size=block_size,
        )
    # s = (q * scale) k^T: the chain rule puts `scale` on dq; dk was taken against the scaled q rows already
    grad_q = rows_as_queries(grad_q_rows * scale, n_heads).to(q.dtype)
    return grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype)


class MemoryEfficientAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d) + causal mask) v that saves only q, k, v, the output and the row log-sum-exp."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        offset: int,
        mask: Tensor | None,
        block_size: int,
    ) -> Tensor:
        out, lse = attention_forward_with_lse(q, k, v, offset=offset, mask=mask, block_size=block_size)
        ctx.save_for_backward(q, k, v, out, lse, mask)
        ctx.offset, ctx.block_size = offset, block_size
        return out

    @staticmethod
    @once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, None, None, None]:
        q, k, v, out, lse, mask = ctx.saved_tensors
        grads = attention_backward_from_lse(
            q, k, v, out, lse, grad_out, offset=ctx.offset, mask=mask, block_size=ctx.block_size
        )
        return *grads, None, None, None


def memory_efficient_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    offset: int = 0,
    mask: Tensor | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Tensor:
    """Causal grouped-query attention, tiled in blocks of `block_size` queries and keys.

    q (B, H, Tq, hd); k, v (B, Hkv, Tk, hd) with H % Hkv == 0. Without `mask`, query i attends key j iff
    j <= offset + i (offset = cached tokens before the first query). With a bool `mask` broadcastable to
    (B, 1, Tq, Tk) (True = may attend, causality included), `offset` is ignored. Returns (B, H, Tq, hd)
    in q's dtype; a query that may attend no key gets a zero output.
    """
    _check_inputs(q, k, v, offset, mask, block_size)
    return MemoryEfficientAttention.apply(q, k, v, offset, mask, block_size)


def memory_efficient_backend(
    q: Tensor, k: Tensor, v: Tensor, *, offset: int, mask: Tensor | None, need_weights: bool = False
) -> tuple[Tensor, None]:
    """`memory_efficient_attention` with the signature of the model's attention-backend registry."""
    if need_weights:
        raise ValueError(
            "need_weights=True: the memory_efficient backend never forms the attention weights; "
            "use attention_backend='eager' to inspect them"
        )
    return memory_efficient_attention(q, k, v, offset=offset, mask=mask), None
