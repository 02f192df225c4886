"""Activation checkpointing of transformer blocks, applied from outside the model (Llama 1, section 2.4).

Backpropagation needs activations from the forward pass. Keeping all of them costs memory; recomputing
all of them (full checkpointing, Chen et al. 2016) costs a second forward. Llama 1 sits in between: "we
save the activations that are expensive to compute, such as the outputs of linear layers", recomputes
the cheap ones (norms, RoPE, SiLU, products) and writes the transformer block's backward by hand
instead of relying on autograd. Its attention core is xformers' memory-efficient kernel, which keeps only
q, k, v, its output and one log-sum-exp per row; the "selective" mode below pairs with
`efficient_attention` the same way, whichever `attention_backend` the model was built with.

`apply_activation_checkpointing(model, mode)` switches every `TransformerBlock` of a `Llama` between:
- "none": plain autograd, every intermediate kept;
- "selective": the hand-written backward below (`SelectiveAttentionSublayer`, `SelectiveFeedForwardSublayer`);
- "selective-policy": PyTorch's op-level selective checkpointing, saving every matmul (`aten.mm`) and
  fused-attention output and recomputing everything else;
- "full": `torch.utils.checkpoint`, only the block's inputs kept.
Parameters and their names are untouched: the block's class is swapped for a subclass with another
`forward`, the way FSDP2's `fully_shard` extends modules. Under CUDA bf16 autocast the hand-written
backward runs in the autocast state of its forward (`torch.amp.custom_fwd` / `custom_bwd`).
"""

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from llama_course.layers.efficient_attention import (
    DEFAULT_BLOCK_SIZE,
    attention_backward_from_lse,
    attention_forward_with_lse,
)
from llama_course.layers.kv_cache import KVCache
from llama_course.layers.rope import apply_rope_interleaved
from llama_course.model import TransformerBlock

CHECKPOINT_MODES = ("none", "selective", "selective-policy", "full")

aten = torch.ops.aten
# Outputs that "selective-policy" keeps: the linear layers' matmuls and PyTorch's fused attention kernels.
POLICY_SAVED_OPS = frozenset(
    {
        aten.mm.default,
        aten._scaled_dot_product_flash_attention.default,
        aten._scaled_dot_product_flash_attention_for_cpu.default,
        aten._scaled_dot_product_efficient_attention.default,
        aten._scaled_dot_product_cudnn_attention.default,
    }
)


def rms_norm_backward(grad_out: Tensor, x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Gradients of y = xhat * weight, xhat = x / sqrt(mean(x^2) + eps), w.r.t. x and weight.

    With r = 1 / sqrt(mean(x^2) + eps) and g = dL/dxhat: dL/dx = r * (g - xhat * mean(g * xhat)), since
    xhat has unit mean square and moving x along xhat only rescales it. Computed in float32 at least.
    """
    acc_dtype = torch.promote_types(x.dtype, torch.float32)
    x_acc = x.to(acc_dtype)
    rsqrt = torch.rsqrt(x_acc.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
    normed = x_acc * rsqrt
    grad_weight = (grad_out * normed.to(x.dtype)).flatten(0, -2).sum(0)
    grad_normed = (grad_out * weight).to(acc_dtype)
    grad_x = rsqrt * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))
    return grad_x.to(x.dtype), grad_weight.to(weight.dtype)


def linear_backward(grad_out: Tensor, x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of y = x W^T: dx = dy W and dW = dy^T x, summed over every leading (batch, time) index."""
    return grad_out @ weight, grad_out.flatten(0, -2).T @ x.flatten(0, -2)


def silu_backward(grad_out: Tensor, a: Tensor) -> Tensor:
    """d silu(a) / da = sigmoid(a) * (1 + a * (1 - sigmoid(a)))."""
    sigmoid = torch.sigmoid(a)
    return grad_out * sigmoid * (1 + a * (1 - sigmoid))


class SelectiveAttentionSublayer(torch.autograd.Function):
    """h = x + wo(attention(rope(wq xn), rope(wk xn), wv xn)), xn = attention_norm(x), with a hand-written backward.

    Saved: the block input x, the outputs of wq, wk, wv, the attention output and its row log-sum-exp.
    Recomputed in the backward: the norm, RoPE, and the attention probabilities (block by block).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        block: TransformerBlock,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        *weights: Tensor,
    ) -> Tensor:
        attention = block.attention
        batch, seq_len, _ = x.shape
        xn = block.attention_norm(x)
        q, k, v = attention.wq(xn), attention.wk(xn), attention.wv(xn)  # (B, T, H * hd), (B, T, Hkv * hd) x 2
        q_rot, k_rot, v_heads = _rotated_heads(attention, q, k, v, cos, sin)
        out, lse = attention_forward_with_lse(
            q_rot, k_rot, v_heads, offset=0, mask=mask, block_size=DEFAULT_BLOCK_SIZE
        )  # (B, H, T, hd), (B, Hkv, T * group)
        ctx.save_for_backward(x, q, k, v, out, lse, cos, sin, mask, *weights)
        ctx.block = block
        return x + attention.wo(out.transpose(1, 2).reshape(batch, seq_len, -1))

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_h: Tensor) -> tuple[Tensor | None, ...]:
        x, q, k, v, out, lse, cos, sin, mask, norm_weight, wq, wk, wv, wo = ctx.saved_tensors
        block: TransformerBlock = ctx.block
        batch, seq_len, _ = x.shape
        # wo: its input is the attention output with heads merged back, (B, T, H * hd)
        grad_merged, grad_wo = linear_backward(grad_h, out.transpose(1, 2).reshape(batch, seq_len, -1), wo)
        grad_out = grad_merged.view(out.shape[0], seq_len, out.shape[1], -1).transpose(1, 2)
        q_rot, k_rot, v_heads = _rotated_heads(block.attention, q, k, v, cos, sin)
        grad_q_rot, grad_k_rot, grad_v_heads = attention_backward_from_lse(
            q_rot, k_rot, v_heads, out, lse, grad_out, offset=0, mask=mask, block_size=DEFAULT_BLOCK_SIZE
        )
        # RoPE is a rotation: its transpose rotates by the opposite angle
        grad_q = apply_rope_interleaved(grad_q_rot, cos, -sin).transpose(1, 2).reshape(q.shape)
        grad_k = apply_rope_interleaved(grad_k_rot, cos, -sin).transpose(1, 2).reshape(k.shape)
        grad_v = grad_v_heads.transpose(1, 2).reshape(v.shape)
        xn = block.attention_norm(x)
        grad_xn_q, grad_wq = linear_backward(grad_q, xn, wq)
        grad_xn_k, grad_wk = linear_backward(grad_k, xn, wk)
        grad_xn_v, grad_wv = linear_backward(grad_v, xn, wv)
        grad_x, grad_norm_weight = rms_norm_backward(
            grad_xn_q + grad_xn_k + grad_xn_v, x, norm_weight, block.attention_norm.eps
        )
        return grad_h + grad_x, None, None, None, None, grad_norm_weight, grad_wq, grad_wk, grad_wv, grad_wo


def _rotated_heads(
    attention: nn.Module, q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Linear outputs (B, T, heads * hd) -> heads (B, heads, T, hd), RoPE applied to queries and keys."""
    batch, seq_len, _ = q.shape
    q = q.view(batch, seq_len, attention.n_heads, attention.head_dim).transpose(1, 2)
    k = k.view(batch, seq_len, attention.n_kv_heads, attention.head_dim).transpose(1, 2)
    v = v.view(batch, seq_len, attention.n_kv_heads, attention.head_dim).transpose(1, 2)
    return apply_rope_interleaved(q, cos, sin), apply_rope_interleaved(k, cos, sin), v


class SelectiveFeedForwardSublayer(torch.autograd.Function):
    """y = h + w2(silu(w1 hn) * w3 hn), hn = ffn_norm(h), with a hand-written backward.

    Saved: the input h and the outputs a = w1 hn and b = w3 hn. Recomputed: the norm, silu(a) and the product.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx: FunctionCtx, h: Tensor, block: TransformerBlock, *weights: Tensor) -> Tensor:
        feed_forward = block.feed_forward
        hn = block.ffn_norm(h)
        gate, value = feed_forward.w1(hn), feed_forward.w3(hn)  # (B, T, hidden) each
        ctx.save_for_backward(h, gate, value, *weights)
        ctx.block = block
        return h + feed_forward.w2(F.silu(gate) * value)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        h, gate, value, norm_weight, w1, w3, w2 = ctx.saved_tensors
        block: TransformerBlock = ctx.block
        activated = F.silu(gate)
        grad_product, grad_w2 = linear_backward(grad_y, activated * value, w2)
        grad_gate = silu_backward(grad_product * value, gate)
        grad_value = grad_product * activated
        hn = block.ffn_norm(h)
        grad_hn_gate, grad_w1 = linear_backward(grad_gate, hn, w1)
        grad_hn_value, grad_w3 = linear_backward(grad_value, hn, w3)
        grad_h, grad_norm_weight = rms_norm_backward(grad_hn_gate + grad_hn_value, h, norm_weight, block.ffn_norm.eps)
        return grad_y + grad_h, None, grad_norm_weight, grad_w1, grad_w3, grad_w2


def selective_block_forward(
    block: TransformerBlock, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None
) -> Tensor:
    """One transformer block through the two hand-written sublayers; same value as `TransformerBlock.forward`."""
    attention, feed_forward = block.attention, block.feed_forward
    h = SelectiveAttentionSublayer.apply(
        x, block, cos, sin, mask,
        block.attention_norm.weight, attention.wq.weight, attention.wk.weight, attention.wv.weight,
        attention.wo.weight,
    )  # fmt: skip
    return SelectiveFeedForwardSublayer.apply(
        h, block, block.ffn_norm.weight, feed_forward.w1.weight, feed_forward.w3.weight, feed_forward.w2.weight
    )


def _save_matmuls_policy(ctx: object, op: object, *args: object, **kwargs: object) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in POLICY_SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


class CheckpointedTransformerBlock(TransformerBlock):
    """A `TransformerBlock` whose training forward follows `self.checkpoint_mode` (one of CHECKPOINT_MODES).

    Decoding with a KV cache, asking for attention weights, or running without gradients uses the plain forward.
    """

    checkpoint_mode: str = "none"

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        *,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        plain = functools.partial(super().forward, mask=mask, cache=cache, layer_idx=layer_idx)
        if self.checkpoint_mode == "none" or cache is not None or need_weights or not torch.is_grad_enabled():
            return plain(x, cos, sin, need_weights=need_weights)
        if self.checkpoint_mode == "selective":
            return selective_block_forward(self, x, cos, sin, mask), None
        context_fn = (
            functools.partial(create_selective_checkpoint_contexts, _save_matmuls_policy)
            if self.checkpoint_mode == "selective-policy"
            else None
        )
        kwargs = {} if context_fn is None else {"context_fn": context_fn}
        return checkpoint(plain, x, cos, sin, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model: nn.Module, mode: str) -> nn.Module:
    """Set the checkpoint mode of every `TransformerBlock` in `model` (in place; returns `model`).

    mode: "none", "selective" (hand-written backward, Llama 1 section 2.4), "selective-policy" (PyTorch's
    op-level policy saving matmul outputs) or "full" (`torch.utils.checkpoint`). Apply it before
    `fully_shard`, which swaps the blocks' classes too, as torchtitan orders them.
    """
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"checkpoint mode {mode!r} is unknown; choose one of {CHECKPOINT_MODES}")
    blocks = [module for module in model.modules() if isinstance(module, TransformerBlock)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} holds no TransformerBlock to checkpoint")
    variants = getattr(getattr(model, "config", None), "architecture_variants", {})
    if mode == "selective" and set(variants) - {"position_interpolation"}:
        raise ValueError(f"mode='selective' hand-writes the backward of Llama's block, not of {variants}; "
                         "use mode='selective-policy' or 'full'")
    for block in blocks:
        if type(block) not in (TransformerBlock, CheckpointedTransformerBlock):
            raise ValueError(
                f"block class {type(block).__name__} was already extended (fully_shard?); "
                "apply activation checkpointing first"
            )
    for block in blocks:
        block.__class__ = TransformerBlock if mode == "none" else CheckpointedTransformerBlock
        block.checkpoint_mode = mode
    return model
