"""Tests of exercise 3: SiLU, the SwiGLU feed-forward network and its hidden size (Llama 1, section 2.2)."""

import torch
import torch.nn.functional as F

from llama_course.config import PRESETS
from llama_course.experiments.ablation import verdicts
from llama_course.grading.assertions import assert_equal, assert_tensor_close
from llama_course.grading.checks.ex02_rmsnorm import check_shipped_verdicts, synthetic_summary
from llama_course.grading.registry import Exercise
from llama_course.layers.swiglu import FeedForward, ffn_hidden_dim

EXERCISE = Exercise(chapter=3, name="03_swiglu", title="The SwiGLU feed-forward network")


@EXERCISE.test("silu", points=1)
def matches_torch_silu_in_float64(silu):
    x = torch.linspace(-12, 12, 241, dtype=torch.float64)
    assert_tensor_close(silu(x), F.silu(x), atol=1e-12, rtol=1e-12)


@EXERCISE.test("silu", points=1)
def is_zero_at_zero_and_the_identity_for_large_inputs(silu):
    x = torch.tensor([0.0, 40.0, -40.0], dtype=torch.float64)
    assert_tensor_close(silu(x), torch.tensor([0.0, 40.0, 0.0], dtype=torch.float64), atol=1e-12)


def random_feed_forward(dim: int, hidden: int, seed: int) -> FeedForward:
    torch.manual_seed(seed)
    return FeedForward(dim, hidden).double()


@EXERCISE.test("swiglu_ffn", points=2)
def matches_the_llama_feed_forward(swiglu_ffn):
    ffn = random_feed_forward(16, 48, seed=0)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        out = swiglu_ffn(x, ffn.w1.weight, ffn.w2.weight, ffn.w3.weight)
        assert_tensor_close(out, ffn(x), atol=1e-10, rtol=1e-8)


@EXERCISE.test("swiglu_ffn", points=1)
def gates_with_w1_and_not_w3(swiglu_ffn):
    ffn = random_feed_forward(8, 24, seed=1)
    with torch.no_grad():
        ffn.w3.weight.copy_(ffn.w3.weight.abs())  # make swapping gate and value change the result visibly
        x = torch.randn(3, 8, dtype=torch.float64)
        assert_tensor_close(swiglu_ffn(x, ffn.w1.weight, ffn.w2.weight, ffn.w3.weight), ffn(x), atol=1e-10,
                            rtol=1e-8, what="the output with a positive value projection w3")


@EXERCISE.test("swiglu_ffn", points=1)
def gradient_matches_the_reference(swiglu_ffn):
    ffn = random_feed_forward(8, 16, seed=2)
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    weights = [ffn.w1.weight, ffn.w2.weight, ffn.w3.weight]
    grads = torch.autograd.grad(swiglu_ffn(x, *weights).pow(2).sum(), [x, *weights])
    expected = torch.autograd.grad(ffn(x).pow(2).sum(), [x, *weights])
    for name, grad, reference in zip(("x", "w1", "w2", "w3"), grads, expected, strict=True):
        assert_tensor_close(grad, reference, atol=1e-10, rtol=1e-8, what=f"the gradient with respect to {name}")


@EXERCISE.test("ffn_hidden_dim", points=2)
def reproduces_the_papers_hidden_sizes(ffn_hidden_dim_student):
    for name in ("llama1-7b", "llama1-65b", "llama2-13b", "llama2-70b"):
        config = PRESETS[name]
        got = ffn_hidden_dim_student(config.dim, config.multiple_of, config.ffn_dim_multiplier)
        assert_equal(got, config.hidden_dim,
                     what=f"ffn_hidden_dim({config.dim}, {config.multiple_of}, {config.ffn_dim_multiplier}) ({name})")


@EXERCISE.test("ffn_hidden_dim", points=2)
def matches_the_reference_on_random_sizes(ffn_hidden_dim_student):
    generator = torch.Generator().manual_seed(3)
    for _ in range(200):
        dim = int(torch.randint(1, 5000, (), generator=generator))
        multiple_of = int(2 ** torch.randint(0, 9, (), generator=generator))
        multiplier = None if torch.rand((), generator=generator) < 0.5 else round(
            float(torch.rand((), generator=generator)) + 0.6, 2)
        got = ffn_hidden_dim_student(dim, multiple_of, multiplier)
        assert_equal(got, ffn_hidden_dim(dim, multiple_of, multiplier),
                     what=f"ffn_hidden_dim({dim}, {multiple_of}, {multiplier})")



@EXERCISE.test("worse_than_baseline", points=1)
def reads_intervals_above_zero(worse_than_baseline):
    summary = synthetic_summary({"a": (-0.2, 0.1), "b": (0.05, 0.3), "c": (-0.4, -0.1), "d": None, "e": (0.0, 0.2),
                                 "f": (0.001, 0.002)}, "base")
    assert_equal(sorted(worse_than_baseline(summary, "base")), ["b", "f"],
                 what="the variants with a higher loss than the baseline's beyond their interval")


@EXERCISE.test("worse_than_baseline", points=1)
def reads_the_shipped_ffn_ablation(worse_than_baseline):
    check_shipped_verdicts(worse_than_baseline, "ffn", "higher loss")

EXERCISE.references("silu", F.silu, torch.nn.SiLU)
EXERCISE.references("swiglu_ffn", FeedForward)
EXERCISE.references("ffn_hidden_dim", ffn_hidden_dim)
EXERCISE.references("worse_than_baseline", verdicts)
