"""Memory-efficient attention: exact against a float64 softmax, gradcheck, skipped blocks, saved bytes."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llama_course.layers.attention import ATTENTION_BACKENDS
from llama_course.layers.efficient_attention import memory_efficient_attention, memory_efficient_backend
from llama_course.measurements.profiling import bytes_kept_for_backward


def reference_attention(q, k, v, *, offset=0, mask=None):
    """softmax(q k^T / sqrt(d)) v in float64 with repeated KV heads; rows with no visible key give 0."""
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if mask is None:
        mask = torch.arange(k.shape[2])[None, :] <= offset + torch.arange(q.shape[2])[:, None]
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~mask, -math.inf)
    return scores.softmax(dim=-1).nan_to_num(0.0) @ v


def random_qkv(batch, n_heads, n_kv_heads, tq, tk, head_dim, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(batch, n_heads, tq, head_dim), (batch, n_kv_heads, tk, head_dim), (batch, n_kv_heads, tk, head_dim)]
    return [torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype).requires_grad_() for shape in shapes]


def outputs_and_grads(attend, q, k, v, seed=1):
    out = attend(q, k, v)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad(out, (q, k, v), grad_out.to(out.dtype))
    return out, grads


def padding_and_document_mask(batch, tq, tk):
    """(B, 1, Tq, Tk): causal, sequence 0 left-padded by 3 keys, sequence 1 packed as two documents."""
    offset = tk - tq
    causal = torch.arange(tk)[None, :] <= offset + torch.arange(tq)[:, None]
    mask = causal.repeat(batch, 1, 1, 1)
    mask[0, :, :, :3] = False
    document = (torch.arange(tk) >= tk // 2).long()
    mask[1, 0] &= document[offset:, None] == document[None, :]
    return mask


@pytest.mark.parametrize(
    "n_heads, n_kv_heads, tq, tk, offset, block_size, use_mask",
    [
        (3, 3, 5, 5, 0, 2, False),
        (4, 2, 7, 7, 0, 3, False),
        (3, 1, 3, 8, 5, 2, False),
        (4, 2, 5, 7, 0, 2, True),
    ],
)
def test_gradcheck_float64_on_small_odd_shapes(n_heads, n_kv_heads, tq, tk, offset, block_size, use_mask):
    q, k, v = random_qkv(2, n_heads, n_kv_heads, tq, tk, 3)
    mask = padding_and_document_mask(2, tq, tk) if use_mask else None

    def attend(q, k, v):
        return memory_efficient_attention(q, k, v, offset=offset, mask=mask, block_size=block_size)

    assert torch.autograd.gradcheck(attend, (q, k, v))


@pytest.mark.parametrize("block_size", [1, 3, 8, 64])
@pytest.mark.parametrize(
    "n_heads, n_kv_heads, tq, tk, offset",
    [
        (4, 4, 19, 19, 0),  # multi-head, length not a multiple of the block
        (6, 2, 16, 16, 0),  # grouped-query, 3 query heads per KV head
        (8, 1, 13, 13, 0),  # multi-query
        (4, 2, 6, 17, 11),  # a chunk of 6 queries after 11 cached tokens
        (4, 2, 1, 9, 8),  # one decoding step
    ],
)
def test_matches_float64_softmax_reference(block_size, n_heads, n_kv_heads, tq, tk, offset):
    q, k, v = random_qkv(2, n_heads, n_kv_heads, tq, tk, 8)
    out, grads = outputs_and_grads(
        lambda q, k, v: memory_efficient_attention(q, k, v, offset=offset, block_size=block_size), q, k, v
    )
    expected_out, expected_grads = outputs_and_grads(
        lambda q, k, v: reference_attention(q, k, v, offset=offset), q, k, v
    )
    torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-12)
    for grad, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("block_size", [2, 5, 64])
def test_padding_and_document_mask_matches_reference(block_size):
    q, k, v = random_qkv(2, 4, 2, 11, 11, 8)
    mask = padding_and_document_mask(2, 11, 11)  # sequence 0's first 3 query rows see no key at all
    out, grads = outputs_and_grads(
        lambda q, k, v: memory_efficient_attention(q, k, v, mask=mask, block_size=block_size), q, k, v
    )
    expected_out, expected_grads = outputs_and_grads(lambda q, k, v: reference_attention(q, k, v, mask=mask), q, k, v)
    assert out[0, :, :3].abs().max() == 0  # rows without a visible key give 0, not NaN
    torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-12)
    for grad, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)


def test_float32_matches_eager_backend_with_model_mask():
    q, k, v = random_qkv(2, 6, 2, 37, 37, 16, dtype=torch.float32)
    mask = padding_and_document_mask(2, 37, 37)
    mask[0, 0, :3, :3] = torch.eye(3, dtype=torch.bool)  # the model lets a padding query attend itself
    for attend_mask in (None, mask):
        out, grads = outputs_and_grads(
            lambda q, k, v, m=attend_mask: memory_efficient_backend(q, k, v, offset=0, mask=m)[0], q, k, v
        )
        eager_out, eager_grads = outputs_and_grads(
            lambda q, k, v, m=attend_mask: ATTENTION_BACKENDS["eager"](q, k, v, offset=0, mask=m)[0], q, k, v
        )
        torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-5)
        for grad, expected in zip(grads, eager_grads, strict=True):
            torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)


def test_accepts_heads_transposed_from_the_token_layout():
    # the model's projections give (B, T, heads, hd) viewed as (B, heads, T, hd): not contiguous
    q, k, v = (t.detach().transpose(1, 2).contiguous().transpose(1, 2) for t in random_qkv(2, 4, 2, 9, 9, 8))
    assert not q.is_contiguous()
    out = memory_efficient_attention(q, k, v, block_size=4)
    torch.testing.assert_close(out, reference_attention(q, k, v), rtol=0, atol=1e-12)


def test_bfloat16_accumulates_in_float32():
    q, k, v = random_qkv(2, 4, 2, 70, 70, 32, dtype=torch.bfloat16)
    out, grads = outputs_and_grads(lambda q, k, v: memory_efficient_attention(q, k, v, block_size=16), q, k, v)
    eager_out, eager_grads = outputs_and_grads(
        lambda q, k, v: ATTENTION_BACKENDS["eager"](q, k, v, offset=0, mask=None)[0], q, k, v
    )
    exact_inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    exact_out, exact_grads = outputs_and_grads(reference_attention, *exact_inputs)
    assert out.dtype == torch.bfloat16 and all(grad.dtype == torch.bfloat16 for grad in grads)
    # bfloat16 keeps 8 significant bits (relative spacing 2^-8 = 0.004); float32 sums keep the error at that level,
    # no larger than that of the eager backend, which also computes its scores in float32
    for ours, eager, exact in zip((out, *grads), (eager_out, *eager_grads), (exact_out, *exact_grads), strict=True):
        torch.testing.assert_close(ours.double(), exact, rtol=0.01, atol=0.01)
        assert (ours.double() - exact).abs().max() <= (eager.double() - exact).abs().max()


def matmul_flops(run):
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter.get_total_flops()


@pytest.mark.parametrize("n_heads, n_kv_heads", [(4, 4), (6, 2)])
def test_blocks_above_the_causal_diagonal_are_never_computed(n_heads, n_kv_heads):
    batch, seq_len, head_dim, block_size = 2, 128, 8, 32
    q, k, v = random_qkv(batch, n_heads, n_kv_heads, seq_len, seq_len, head_dim)
    # one (query block) x (key block) product: B * Hkv heads of (block * group, hd) @ (hd, block), 2 FLOPs per MAC
    block_product = 2 * batch * n_kv_heads * (block_size * n_heads // n_kv_heads) * head_dim * block_size
    n_blocks = seq_len // block_size
    lower_triangle = n_blocks * (n_blocks + 1) // 2  # 10 of the 16 block pairs

    def attend(mask):
        return memory_efficient_attention(q, k, v, mask=mask, block_size=block_size)

    everything = torch.ones(seq_len, seq_len, dtype=torch.bool)
    # forward: scores q k^T and the weighted sum p v, per visited block pair
    assert matmul_flops(lambda: attend(None)) == 2 * lower_triangle * block_product
    assert matmul_flops(lambda: attend(torch.tril(everything))) == 2 * lower_triangle * block_product
    assert matmul_flops(lambda: attend(everything)) == 2 * n_blocks**2 * block_product
    # backward: recomputed scores, dV, dP, dQ, dK per visited block pair
    out = attend(None)
    assert matmul_flops(lambda: out.sum().backward()) == 5 * lower_triangle * block_product


def test_saves_only_qkv_output_and_logsumexp():
    q, k, v = random_qkv(2, 6, 2, 100, 100, 16, dtype=torch.float32)
    saved = bytes_kept_for_backward(lambda: memory_efficient_attention(q, k, v, block_size=16), inputs=(q, k, v))
    qkv_bytes = sum(t.numel() * 4 for t in (q, k, v))
    out_bytes, lse_bytes = q.numel() * 4, 2 * 6 * 100 * 4  # output like q; one float32 per (batch, head, query)
    assert saved.total == qkv_bytes + out_bytes + lse_bytes
    assert saved.inputs == qkv_bytes


def test_bad_inputs_raise_clear_errors():
    q, k, v = random_qkv(1, 6, 4, 5, 5, 8)
    with pytest.raises(ValueError, match="n_heads=6 is not divisible by n_kv_heads=4"):
        memory_efficient_attention(q, k, v)
    q, k, v = random_qkv(1, 4, 2, 5, 5, 8)
    with pytest.raises(ValueError, match="block_size=0"):
        memory_efficient_attention(q, k, v, block_size=0)
    with pytest.raises(ValueError, match="offset=-1"):
        memory_efficient_attention(q, k, v, offset=-1)
    with pytest.raises(ValueError, match="bool"):
        memory_efficient_attention(q, k, v, mask=torch.ones(5, 5))
    with pytest.raises(ValueError, match=r"mask shape \(4, 5\)"):
        memory_efficient_attention(q, k, v, mask=torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="need_weights=True"):
        memory_efficient_backend(q, k, v, offset=0, mask=None, need_weights=True)
