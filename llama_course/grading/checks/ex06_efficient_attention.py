"""Tests of exercise 6: the online-softmax merge, blockwise causal attention, its backward, the RMSNorm backward.

Llama 1, section 2.4 (memory-efficient attention after Rabe & Staats 2021 with the backward of Dao et al. 2022;
selective activation checkpointing with a hand-written backward).
"""

import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from llama_course.grading.assertions import assert_tensor_close
from llama_course.grading.registry import Exercise
from llama_course.layers.attention import eager_attention
from llama_course.layers.efficient_attention import (
    MemoryEfficientAttention,
    attention_backward_from_lse,
    attention_forward_with_lse,
    blockwise_attention_backward,
    blockwise_attention_forward,
)
from llama_course.training.activation_checkpointing import rms_norm_backward

EXERCISE = Exercise(chapter=6, name="06_efficient_attention", title="Memory-efficient causal attention")


def random_tensor(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def softmax_state(scores: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(max, sum, acc) of rows of scores (R, n) over values (n, d), computed directly; a fully masked row
    (all scores -inf) gets the empty state (-inf, 0, 0)."""
    row_max = scores.amax(-1)
    weights = torch.exp(scores - row_max.masked_fill(row_max == -math.inf, 0.0)[:, None])
    return row_max, weights.sum(-1), weights @ values


@EXERCISE.test("merge_softmax_states", points=2)
def merging_two_key_blocks_gives_the_state_of_all_keys(merge_softmax_states):
    scores, values = 3.0 * random_tensor(0, (5, 11)), random_tensor(1, (11, 4))
    expected = softmax_state(scores, values)
    for split in (1, 6, 10):
        first = softmax_state(scores[:, :split], values[:split])
        second = softmax_state(scores[:, split:], values[split:])
        for order, states in (("first, second", (first, second)), ("second, first", (second, first))):
            merged = merge_softmax_states(*states[0], *states[1])
            for name, got, want in zip(("max", "sum", "acc"), merged, expected, strict=True):
                assert_tensor_close(got, want, atol=1e-12, rtol=1e-12,
                                    what=f"the merged {name} of keys [0, {split}) and [{split}, 11) ({order})")


@EXERCISE.test("merge_softmax_states", points=1)
def folding_key_blocks_reproduces_attention_and_its_lse(merge_softmax_states):
    q_rows, k, v = random_tensor(2, (1, 1, 6, 8)), random_tensor(3, (1, 1, 14, 8)), random_tensor(4, (1, 1, 14, 8))
    out, lse = blockwise_attention_forward(q_rows, k, v, group=1, offset=8, mask=None, block_size=14)
    scores = q_rows[0, 0] @ k[0, 0].T  # (6, 14); query i may see keys j <= 8 + i
    scores = scores.masked_fill(torch.arange(14)[None, :] > 8 + torch.arange(6)[:, None], -math.inf)
    state = softmax_state(scores[:, :4], v[0, 0, :4])
    for start in range(4, 14, 4):
        state = merge_softmax_states(*state, *softmax_state(scores[:, start : start + 4], v[0, 0, start : start + 4]))
    row_max, row_sum, acc = state
    assert_tensor_close(acc / row_sum[:, None], out[0, 0], atol=1e-10, rtol=1e-10,
                        what="acc / sum after merging key blocks of 4 (query i sees keys <= 8 + i)")
    assert_tensor_close(row_max + torch.log(row_sum), lse[0, 0], atol=1e-10, rtol=1e-10,
                        what="max + log(sum) after merging key blocks of 4")


@EXERCISE.test("merge_softmax_states", points=1)
def merging_with_an_empty_state_returns_the_other_state(merge_softmax_states):
    state = softmax_state(random_tensor(5, (3, 7)), random_tensor(6, (7, 2)))
    empty = (torch.full((3,), -math.inf, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
             torch.zeros(3, 2, dtype=torch.float64))
    for order, states in (("state, empty", (state, empty)), ("empty, state", (empty, state))):
        merged = merge_softmax_states(*states[0], *states[1])
        for name, got, want in zip(("max", "sum", "acc"), merged, state, strict=True):
            assert_tensor_close(got, want, atol=1e-12, rtol=1e-12, what=f"the merged {name} of ({order})")
    row_max, row_sum, acc = merge_softmax_states(*empty, *empty)
    if not (isinstance(row_max, torch.Tensor) and row_max.shape == (3,) and (row_max == -math.inf).all()):
        raise AssertionError(f"the merged max of two empty states should be -inf in every row, got {row_max}")
    assert_tensor_close(row_sum, empty[1], atol=0.0, rtol=0.0, what="the merged sum of two empty states (no NaN)")
    assert_tensor_close(acc, empty[2], atol=0.0, rtol=0.0, what="the merged acc of two empty states (no NaN)")


def random_qkv(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return random_tensor(seed, shape), random_tensor(seed + 1, shape), random_tensor(seed + 2, shape)


def package_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The package's row log-sum-exp, (B, H, T) when every head has its own keys (group 1)."""
    return attention_forward_with_lse(q, k, v, offset=0, mask=None, block_size=16)[1]


@EXERCISE.test("blockwise_causal_attention", points=2)
def output_matches_causal_softmax_attention(blockwise_causal_attention):
    q, k, v = random_qkv(10, (2, 3, 37, 8))
    expected = eager_attention(q, k, v)[0]
    for block_size in (1, 8, 16, 64):
        out, _ = blockwise_causal_attention(q, k, v, block_size)
        assert_tensor_close(out, expected, atol=1e-10, rtol=1e-10,
                            what=f"the output for T=37, block_size={block_size}")


@EXERCISE.test("blockwise_causal_attention", points=1)
def lse_matches_the_log_sum_exp_of_the_scaled_scores(blockwise_causal_attention):
    q, k, v = random_qkv(13, (1, 2, 21, 4))
    expected = package_lse(q, k, v)
    for block_size in (5, 32):
        _, lse = blockwise_causal_attention(q, k, v, block_size)
        assert_tensor_close(lse, expected, atol=1e-10, rtol=1e-10, what=f"the lse for T=21, block_size={block_size}")


@EXERCISE.test("blockwise_causal_attention", points=1)
def blocks_above_the_diagonal_are_never_computed(blockwise_causal_attention):
    seq_len, head_dim, block_size = 128, 8, 16
    q, k, v = random_qkv(16, (1, 1, seq_len, head_dim))
    counter = FlopCounterMode(display=False)
    with counter:
        out, _ = blockwise_causal_attention(q, k, v, block_size)
    assert_tensor_close(out, eager_attention(q, k, v)[0], atol=1e-10, rtol=1e-10, what="the output for T=128")
    dense = 2 * (2 * seq_len * seq_len * head_dim)  # q k^T and p v over the whole (T, T) square
    n_blocks = seq_len // block_size
    needed = dense * n_blocks * (n_blocks + 1) // 2 // n_blocks**2  # the 36 blocks on or below the diagonal
    if counter.get_total_flops() > 1.1 * needed:
        raise AssertionError(
            f"your function spent {counter.get_total_flops()} FLOPs in matrix products for T=128, block_size=16; "
            f"the 36 of 64 blocks on or below the diagonal need {needed} (the whole square: {dense}): "
            f"skip the key blocks that lie entirely after the last query of the block"
        )


def eager_gradients(q, k, v, grad_out):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    return torch.autograd.grad(eager_attention(q, k, v)[0], (q, k, v), grad_out)


@EXERCISE.test("attention_backward", points=2)
def gradients_match_autograd_of_causal_softmax_attention(attention_backward):
    q, k, v = random_qkv(20, (2, 3, 11, 4))
    grad_out = random_tensor(23, (2, 3, 11, 4))
    out, lse = attention_forward_with_lse(q, k, v, offset=0, mask=None, block_size=16)
    got = attention_backward(q, k, v, out, lse, grad_out)
    if not isinstance(got, tuple) or len(got) != 3:
        raise AssertionError(f"attention_backward should return a tuple (dq, dk, dv), got {type(got).__name__}")
    for name, ours, expected in zip(("dq", "dk", "dv"), got, eager_gradients(q, k, v, grad_out), strict=True):
        assert_tensor_close(ours, expected, atol=1e-10, rtol=1e-10, what=name)


@EXERCISE.test("attention_backward", points=1)
def probabilities_are_recomputed_from_the_saved_lse(attention_backward):
    # lse + log 2 halves every recomputed probability, hence every gradient, while D = rowsum(dO * O) stays
    q, k, v = random_qkv(24, (1, 2, 9, 4))
    grad_out = random_tensor(27, (1, 2, 9, 4))
    out, lse = attention_forward_with_lse(q, k, v, offset=0, mask=None, block_size=16)
    got = attention_backward(q, k, v, out, lse + math.log(2.0), grad_out)
    for name, ours, expected in zip(("dq", "dk", "dv"), got, eager_gradients(q, k, v, grad_out), strict=True):
        assert_tensor_close(ours, expected / 2, atol=1e-10, rtol=1e-10,
                            what=f"{name} when lse is raised by log 2 (P = exp(S - lse) halves; D comes from out)")


@EXERCISE.test("rms_norm_backward", points=2)
def rms_norm_gradients_match_the_reference(rms_norm_backward_student):
    x, grad_out = 2.0 * random_tensor(30, (3, 5, 16)) + 0.5, random_tensor(31, (3, 5, 16))
    weight = 1.0 + 0.1 * random_tensor(32, (16,))
    for eps in (1e-6, 0.5):
        got = rms_norm_backward_student(grad_out, x, weight, eps)
        expected = rms_norm_backward(grad_out, x, weight, eps)
        for name, ours, want in zip(("grad_x", "grad_weight"), got, expected, strict=True):
            assert_tensor_close(ours, want, atol=1e-10, rtol=1e-10, what=f"{name} with eps={eps}")


@EXERCISE.test("rms_norm_backward", points=1)
def moving_x_along_itself_changes_nothing_when_eps_is_zero(rms_norm_backward_student):
    x, grad_out = random_tensor(33, (4, 32)), random_tensor(34, (4, 32))
    grad_x, _ = rms_norm_backward_student(grad_out, x, torch.ones(32, dtype=torch.float64), 0.0)
    assert_tensor_close((grad_x * x).sum(-1), torch.zeros(4, dtype=torch.float64), atol=1e-10, rtol=0.0,
                        what="sum(grad_x * x) of each row (RMSNorm(c x) = RMSNorm(x) for eps = 0)")


EXERCISE.references("merge_softmax_states", blockwise_attention_forward, attention_forward_with_lse)
EXERCISE.references("blockwise_causal_attention", blockwise_attention_forward, attention_forward_with_lse,
                    eager_attention, MemoryEfficientAttention)
EXERCISE.references("attention_backward", blockwise_attention_backward, attention_backward_from_lse,
                    MemoryEfficientAttention)
EXERCISE.references("rms_norm_backward", rms_norm_backward)
