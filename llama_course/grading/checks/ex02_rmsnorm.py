"""Tests of exercise 2: RMSNorm (Llama 1, section 2.2; Zhang & Sennrich 2019, Eq. 4) and the pre-norm block."""

import torch

from llama_course.config import ModelConfig
from llama_course.experiments.ablation import load_results, verdicts
from llama_course.grading.assertions import assert_equal, assert_tensor_close
from llama_course.grading.registry import Exercise
from llama_course.layers.rmsnorm import RMSNorm
from llama_course.layers.rope import rope_angles
from llama_course.model import TransformerBlock

EXERCISE = Exercise(chapter=2, name="02_rmsnorm", title="RMSNorm and pre-normalisation")


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    norm = RMSNorm(x.shape[-1], eps).to(weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
    return norm(x)


@EXERCISE.test("rms_norm", points=2)
def matches_the_reference_in_float64(rms_norm):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=generator, dtype=torch.float64) * 3 + 1
    weight = torch.rand(16, generator=generator, dtype=torch.float64) + 0.5
    with torch.no_grad():
        assert_tensor_close(rms_norm(x, weight, 1e-6), reference_rms_norm(x, weight, 1e-6), atol=1e-10, rtol=1e-10)


@EXERCISE.test("rms_norm", points=1)
def adds_eps_inside_the_square_root(rms_norm):
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1e-2
    weight = torch.ones(8, dtype=torch.float64)
    with torch.no_grad():
        assert_tensor_close(rms_norm(x, weight, 1e-3), reference_rms_norm(x, weight, 1e-3), atol=1e-10, rtol=1e-8)


@EXERCISE.test("rms_norm", points=1)
def output_has_unit_root_mean_square_and_ignores_scale(rms_norm):
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    weight = torch.ones(32, dtype=torch.float64)
    with torch.no_grad():
        out, scaled = rms_norm(x, weight, 1e-12), rms_norm(7.5 * x, weight, 1e-12)
    assert_tensor_close(out.pow(2).mean(-1).sqrt(), torch.ones(6, dtype=torch.float64), atol=1e-8,
                        what="the root mean square of each output row")
    assert_tensor_close(scaled, out, atol=1e-8, what="rms_norm(7.5 * x)")


@EXERCISE.test("rms_norm", points=2)
def reduces_in_float32_for_float16_input(rms_norm):
    # Squares of 300 exceed float16's maximum (65504): a float16 reduction overflows to inf.
    x = (torch.randn(4, 64, generator=torch.Generator().manual_seed(3)) * 300).half()
    weight = torch.ones(64, dtype=torch.float16)
    with torch.no_grad():
        out = rms_norm(x, weight, 1e-5)
        assert_tensor_close(out, reference_rms_norm(x, weight, 1e-5), atol=2e-3, rtol=2e-3,
                            what="rms_norm of a float16 input (returned in float16)")


@EXERCISE.test("rms_norm", points=1)
def gradient_matches_the_reference(rms_norm):
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = (torch.rand(8, generator=generator, dtype=torch.float64) + 0.5).requires_grad_()
    upstream = torch.randn(2, 3, 8, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad((rms_norm(x, weight, 1e-6) * upstream).sum(), (x, weight))
    x_ref, weight_ref = x.detach().requires_grad_(), weight.detach().requires_grad_()
    norm = RMSNorm(8, 1e-6).double()
    norm.weight = torch.nn.Parameter(weight_ref)
    expected = torch.autograd.grad((norm(x_ref) * upstream).sum(), (x_ref, norm.weight))
    assert_tensor_close(grads[0], expected[0], atol=1e-10, rtol=1e-8, what="the gradient with respect to x")
    assert_tensor_close(grads[1], expected[1], atol=1e-10, rtol=1e-8, what="the gradient with respect to weight")


@EXERCISE.test("pre_norm_block", points=3)
def matches_the_llama_transformer_block(pre_norm_block):
    torch.manual_seed(5)
    config = ModelConfig(dim=32, n_layers=1, n_heads=4, multiple_of=16, attention_backend="eager")
    block = TransformerBlock(config).double()
    with torch.no_grad():
        for norm in (block.attention_norm, block.ffn_norm):
            norm.weight.uniform_(0.5, 1.5)
        x = torch.randn(2, 7, 32, dtype=torch.float64)
        cos, sin = (angle[None, None] for angle in rope_angles(torch.arange(7, dtype=torch.float64), config.head_dim))
        out = pre_norm_block(x, lambda h: block.attention(h, cos, sin)[0], block.feed_forward,
                             block.attention_norm, block.ffn_norm)
        assert_tensor_close(out, block(x, cos, sin)[0], atol=1e-10, rtol=1e-8)


@EXERCISE.test("pre_norm_block", points=1)
def adds_each_sublayer_output_to_the_residual_stream(pre_norm_block):
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    identity = torch.nn.Identity()
    # h = x + 2x = 3x, then out = h + h = 6x: every sublayer adds to the stream, none replaces it.
    out = pre_norm_block(x, lambda h: 2 * h, lambda h: h, identity, identity)
    assert_tensor_close(out, 6 * x, atol=1e-12, what="the block with attention(h) = 2h, ffn(h) = h, no norms")
    zero = pre_norm_block(x, torch.zeros_like, torch.zeros_like, identity, identity)
    assert_tensor_close(zero, x, atol=0.0, rtol=0.0, what="the block whose sublayers output zeros")


def synthetic_summary(intervals: dict[str, tuple[float, float] | None], baseline: str) -> dict:
    """A sweep summary with the given (low, high) difference intervals (None: diverged)."""
    summary = {baseline: {"diverged": 0, "val_loss": {"mean": 2.0, "low": 1.9, "high": 2.1}, "difference": None}}
    for name, interval in intervals.items():
        difference = None if interval is None else {"mean": sum(interval) / 2, "low": interval[0],
                                                     "high": interval[1]}
        summary[name] = {"diverged": 3 if interval is None else 0, "val_loss": None if interval is None else
                         {"mean": 2.0, "low": 1.9, "high": 2.1}, "difference": difference}
    return summary


def check_shipped_verdicts(student, sweep: str, verdict: str) -> None:
    """`student(summary, baseline)` names exactly the variants of the shipped `sweep` that have `verdict`."""
    results = load_results(sweep)
    expected = sorted(name for name, judged in verdicts(results).items() if judged == verdict)
    assert_equal(sorted(student(results["summary"], results["sweep"]["baseline"])), expected,
                 what=f"your answer on the shipped {sweep} sweep")


@EXERCISE.test("within_noise", points=1)
def reads_intervals_that_contain_zero(within_noise):
    summary = synthetic_summary({"a": (-0.2, 0.1), "b": (0.05, 0.3), "c": (-0.4, -0.1), "d": None, "e": (0.0, 0.2),
                                 "f": (-0.3, 0.0)}, "base")
    assert_equal(sorted(within_noise(summary, "base")), ["a", "e", "f"],
                 what="the variants within noise (an interval touching 0 contains it)")


@EXERCISE.test("within_noise", points=1)
def reads_the_shipped_norm_ablation(within_noise):
    check_shipped_verdicts(within_noise, "norms", "within noise")

EXERCISE.references("rms_norm", RMSNorm, torch.nn.RMSNorm, torch.nn.functional.rms_norm)
EXERCISE.references("pre_norm_block", TransformerBlock)
EXERCISE.references("within_noise", verdicts)
