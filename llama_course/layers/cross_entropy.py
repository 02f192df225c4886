"""The output projection fused with the cross-entropy loss, computed in chunks of rows.

The logits of a batch are large: 8 x 256 tokens x 32,000 words in float32 is 262 MB, written by the output
matmul, read by the softmax, and the same again for their gradient. Here the logits of only `chunk_size` rows
exist at a time, in ONE buffer that every chunk reuses: the softmax runs in place in it, and each chunk's loss
AND its gradients (with respect to the hidden states and the output weight) are computed in the forward pass,
so the backward only scales them by the incoming gradient. The matmuls are the same as the unfused version.

What this saves on a CPU is time, not only memory: PyTorch's CPU tensors come straight from the C allocator,
which maps every block larger than 32 MB fresh from the kernel and returns it on free, so each new large
tensor costs one page fault per 4 KB page on first touch (about 2 us each here: ~65 ms per 131 MB of logits).
Reusing one buffer and accumulating in place (`out=`, `addmm_`) avoids nearly all of them.
"""

import torch

IGNORE_INDEX = -100  # targets with this value carry no loss (prompt tokens, padding, document boundaries)
DEFAULT_CHUNK_SIZE = 1024


def _matmul_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, accumulate: bool = False) -> None:
    """out = a @ b (or out += a @ b) without a temporary when the dtypes agree and autocast is off.

    Otherwise (bf16 inputs into a float32 `out`, or autocast choosing the matmul's precision) the product is
    computed as usual and then converted into `out`.
    """
    if a.dtype == b.dtype == out.dtype and not torch.is_autocast_enabled(out.device.type):
        if accumulate:
            out.addmm_(a, b)
        else:
            torch.mm(a, b, out=out)
    elif accumulate:
        out += (a @ b).to(out.dtype)
    else:
        out.copy_(a @ b)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int, reduction: str):
        ctx.weight_dtype = weight.dtype
        compute = torch.promote_types(hidden.dtype, torch.float32)
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        count = (targets != IGNORE_INDEX).sum()
        scale = torch.ones((), dtype=compute, device=hidden.device)
        if reduction == "mean":
            scale = scale / count.clamp(min=1)
        total = torch.zeros((), dtype=compute, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            new = torch.empty if hidden.shape[0] else torch.zeros  # the first chunk writes it; no rows, no gradient
            grad_weight = new(weight.shape, dtype=compute, device=weight.device)
        buffer = torch.empty(min(chunk_size, hidden.shape[0]), weight.shape[0], dtype=compute, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h, t = hidden[rows], targets[rows]
            logits = buffer[: len(t)]
            _matmul_into(logits, h, weight.T)  # (chunk, V)
            keep = t != IGNORE_INDEX
            safe_t = t.masked_fill(~keep, 0)
            target_logit = logits.gather(1, safe_t[:, None]).squeeze(1)
            # Softmax in place: e = exp(z - max), loss = max + log(sum e) - z_target (= logsumexp - z_target).
            row_max = logits.amax(dim=1, keepdim=True)
            exps = logits.sub_(row_max).exp_()
            row_sum = exps.sum(dim=1)
            total += ((row_max.squeeze(1) + row_sum.log() - target_logit) * keep).sum()
            if needs_grad:
                # d(loss)/d(logits) = e / sum - one_hot(target) = (e - sum * one_hot) / sum. The row factor
                # 1 / sum, with the row's loss weight (`scale`, 0 on ignored rows), multiplies the small matmul
                # operands instead of this (chunk, V) buffer.
                exps[torch.arange(len(t), device=t.device), safe_t] -= row_sum
                row_weight = (keep * scale / row_sum)[:, None]  # (chunk, 1)
                grad_logits = exps.to(hidden.dtype)
                if grad_hidden is not None:
                    _matmul_into(grad_hidden[rows], grad_logits, weight)
                    grad_hidden[rows] *= row_weight
                if grad_weight is not None:
                    _matmul_into(grad_weight, grad_logits.T, (h * row_weight).to(h.dtype), accumulate=start > 0)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    reduction: str = "mean",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T` against `targets`, skipping IGNORE_INDEX, without full logits.

    hidden: (N, d); weight: (V, d); targets: (N,). reduction: "mean" over the kept targets, or "sum".
    Logits and the softmax are computed in float32 (float64 for float64 inputs).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r} must be 'mean' or 'sum'")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be a positive number of rows")
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_size, reduction)
