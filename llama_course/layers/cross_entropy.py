"""The output projection fused with the cross-entropy loss, computed in chunks of rows.

The logits of a batch are large: 8 x 256 tokens x 32,000 words in float32 is 262 MB, written by the output
matmul, read by the softmax, and the same again for their gradient. Here the logits of only `chunk_size` rows
exist at a time: each chunk's loss AND its gradients (with respect to the hidden states and the output weight)
are computed in the forward pass, so the backward only scales them by the incoming gradient. The matmuls are
the same as the unfused version; what is saved is memory traffic and the full-size softmax buffers.
"""

import torch

IGNORE_INDEX = -100  # targets with this value carry no loss (prompt tokens, padding, document boundaries)
DEFAULT_CHUNK_SIZE = 1024


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
            grad_weight = torch.zeros(weight.shape, dtype=compute, device=weight.device)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h, t = hidden[rows], targets[rows]
            logits = (h @ weight.T).to(compute)  # (chunk, V)
            keep = t != IGNORE_INDEX
            safe_t = t.masked_fill(~keep, 0)
            log_probs = logits.log_softmax(dim=-1)  # one fused pass over the (chunk, V) logits
            total -= (log_probs.gather(1, safe_t[:, None]).squeeze(1) * keep).sum()
            if needs_grad:
                # d(loss)/d(logits) = softmax - one_hot(target), in place of the log-probabilities. Each row's
                # weight (`scale`, 0 on ignored rows) multiplies the small matmul operands, not this (chunk, V) one.
                grad_logits = log_probs.exp_()
                grad_logits[torch.arange(len(t), device=t.device), safe_t] -= 1.0
                grad_logits = grad_logits.to(hidden.dtype)
                row_weight = (keep * scale)[:, None]  # (chunk, 1)
                if grad_hidden is not None:
                    grad_hidden[rows] = (grad_logits @ weight) * row_weight
                if grad_weight is not None:
                    grad_weight += (grad_logits.T @ (h * row_weight).to(h.dtype)).to(compute)
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
