"""Tests of exercise 9: the training state per rank under DDP and FSDP, the MFU of a run, the days it takes, and
the SwiGLU block split over ranks by hand (tensor parallelism, Megatron-LM), graded on 2 gloo processes.

Llama 1, section 2.4 (2,048 A100-80GB, about 380 tokens/s/GPU, about 21 days for 1.4T tokens); ZeRO-3 /
FSDP2 sharding (Rajbhandari et al. 2020); model FLOPs utilisation (PaLM, appendix B).
"""

import random

import numpy
import torch
import torch.nn.functional as F

from llama_course.config import PRESETS, ModelConfig, count_parameters
from llama_course.grading.assertions import assert_equal, assert_number_close, assert_tensor_close, raises_value_error
from llama_course.grading.checks.tensor_parallel_swiglu import on_gloo_ranks, random_swiglu, reference_shards
from llama_course.grading.registry import Exercise
from llama_course.measurements.sharding_memory import BYTES_PER_PARAMETER, expected_rank_bytes, rank_state_bytes
from llama_course.model import Llama
from llama_course.training.mfu import model_flops_utilization, training_flops_per_token
from llama_course.training.optim import AdamWConfig, build_optimizer

EXERCISE = Exercise(chapter=9, name="09_scaling_out", title="Scaling out")

SECONDS_PER_DAY = 86_400
A100_BF16_PEAK_FLOPS = 312e12  # dense bf16 tensor-core peak of the A100 datasheet


def assert_state_close(actual, expected: dict[str, float], what: str) -> None:
    if not isinstance(actual, dict):
        raise AssertionError(f"{what} should be a dict, got {type(actual).__name__}")
    assert_equal(sorted(actual), sorted(expected), what=f"the keys of {what}")
    for kind, value in expected.items():
        assert_number_close(actual[kind], value, what=f"{what}[{kind!r}]")


@EXERCISE.test("training_state_bytes_per_rank", points=2)
def bytes_match_the_reference_for_ddp_and_fsdp(training_state_bytes_per_rank):
    rng = random.Random(9)
    cases = [(count_parameters(PRESETS["llama1-65b"]), 2048), (count_parameters(PRESETS["small"]), 2)]
    cases += [(rng.randint(1, 10**11), rng.choice((1, 2, 3, 7, 8, 64, 1000))) for _ in range(20)]
    for n_params, world_size in cases:
        for parallelism in ("ddp", "fsdp"):
            assert_state_close(training_state_bytes_per_rank(n_params, world_size, parallelism),
                               expected_rank_bytes(n_params, world_size, parallelism),
                               what=f"the state of one rank for {n_params:,} parameters, {parallelism}, "
                                    f"{world_size} ranks")


@EXERCISE.test("training_state_bytes_per_rank", points=2)
def one_rank_holds_what_a_real_adamw_step_allocates_and_fsdp_shards_add_up_to_it(training_state_bytes_per_rank):
    torch.manual_seed(0)
    model = Llama(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, multiple_of=16))
    optimizer = build_optimizer(model, AdamWConfig(lr=1e-3))
    tokens = torch.randint(0, 50, (2, 8))
    model(tokens, targets=tokens).loss.backward()
    optimizer.step()
    measured = rank_state_bytes(model, optimizer)
    n_params = sum(p.numel() for p in model.parameters())
    for parallelism in ("ddp", "fsdp"):
        assert_state_close(training_state_bytes_per_rank(n_params, 1, parallelism), measured,
                           what=f"the state of a single process ({parallelism}) against the bytes a real float32 "
                                f"AdamW step holds for {n_params:,} parameters")
    for world_size in (2, 8, 2048):
        replica = training_state_bytes_per_rank(n_params, world_size, "ddp")
        shard = training_state_bytes_per_rank(n_params, world_size, "fsdp")
        for kind in BYTES_PER_PARAMETER:
            assert_number_close(world_size * shard[kind], replica[kind], tolerance=1e-9,
                                what=f"{world_size} x the FSDP shard of {kind} (it should equal one DDP replica)")


@EXERCISE.test("training_state_bytes_per_rank", points=1)
def an_unknown_parallelism_is_rejected_with_a_value_error(training_state_bytes_per_rank):
    try:
        training_state_bytes_per_rank(1000, 4, "zero2")
    except ValueError:
        return
    raise AssertionError("parallelism='zero2' should raise ValueError (only 'ddp' and 'fsdp' are known)")


@EXERCISE.test("mfu_of_run", points=2)
def mfu_matches_the_reference_on_random_runs(mfu_of_run):
    rng = random.Random(9)
    for _ in range(20):
        preset = rng.choice(("llama1-7b", "llama1-65b", "llama2-70b", "small"))
        flops_per_token = training_flops_per_token(PRESETS[preset], rng.choice((256, 2048, 4096)))
        n_gpus, seconds = rng.choice((1, 8, 64, 2048)), rng.uniform(1.0, 1e5)
        tokens, peak = rng.randint(10**3, 10**12), rng.uniform(1e12, 1e15)
        expected = model_flops_utilization(tokens / seconds / n_gpus, flops_per_token, peak)
        assert_number_close(mfu_of_run(tokens, seconds, n_gpus, flops_per_token, peak), expected, tolerance=1e-9,
                            what=f"the MFU of {tokens:,} {preset} tokens in {seconds:.1f} s on {n_gpus} GPUs of peak "
                                 f"{peak:.3g} FLOP/s")


@EXERCISE.test("mfu_of_run", points=1)
def llama_65b_at_380_tokens_per_second_per_a100_uses_about_half_the_peak(mfu_of_run):
    flops_per_token = training_flops_per_token(PRESETS["llama1-65b"], 2048)
    one_day = mfu_of_run(380 * 2048 * SECONDS_PER_DAY, SECONDS_PER_DAY, 2048, flops_per_token, A100_BF16_PEAK_FLOPS)
    one_hour = mfu_of_run(380 * 2048 * 3600, 3600, 2048, flops_per_token, A100_BF16_PEAK_FLOPS)
    assert_number_close(one_hour, one_day, tolerance=1e-9, what="the MFU of the same run measured over an hour")
    doubled = mfu_of_run(380 * 2048 * 3600, 3600, 4096, flops_per_token, A100_BF16_PEAK_FLOPS)
    assert_number_close(doubled, one_day / 2, tolerance=1e-9,
                        what="the MFU when twice the GPUs process the same tokens in the same time")
    if not 0.45 < one_day < 0.55:
        raise AssertionError(f"the MFU of Llama 1 65B at 380 tokens/s on each of 2,048 A100s (312 TFLOP/s) is "
                             f"{one_day!r}, expected about 0.5")


def reference_days(n_tokens: float, tokens_per_second_per_gpu: float, n_gpus: int) -> float:
    return n_tokens / (tokens_per_second_per_gpu * n_gpus) / SECONDS_PER_DAY


@EXERCISE.test("days_to_train", points=2)
def days_match_the_float64_formula_on_random_runs(days_to_train):
    rng = random.Random(9)
    for _ in range(20):
        n_tokens, speed, n_gpus = rng.randint(10**6, 10**13), rng.uniform(10.0, 1e5), rng.choice((1, 8, 512, 6000))
        assert_number_close(days_to_train(n_tokens, speed, n_gpus), reference_days(n_tokens, speed, n_gpus),
                            tolerance=1e-9, what=f"the days to train on {n_tokens:,} tokens at {speed:.1f} "
                                                 f"tokens/s on each of {n_gpus} GPUs")


@EXERCISE.test("days_to_train", points=1)
def llama_65b_takes_about_21_days_and_twice_the_gpus_halve_it(days_to_train):
    days = days_to_train(1.4e12, 380, 2048)
    if not isinstance(days, (int, float)) or not 20 < days < 22:
        raise AssertionError(f"1.4T tokens at 380 tokens/s on each of 2,048 GPUs take {days!r} days, expected about "
                             f"21 (Llama 1, section 2.4)")
    assert_number_close(days_to_train(1.4e12, 380, 4096), days / 2, tolerance=1e-9, what="the days on 4,096 GPUs")


EXERCISE.references("training_state_bytes_per_rank", expected_rank_bytes)
EXERCISE.references("mfu_of_run", model_flops_utilization)
EXERCISE.references("days_to_train", reference_days)


# Tasks 4 and 5: the SwiGLU block split over ranks by hand (Megatron-LM), task 5 on 2 gloo processes.
@EXERCISE.test("swiglu_shards", points=2)
def each_rank_gets_its_rows_of_w1_w3_and_columns_of_w2(swiglu_shards):
    swiglu = random_swiglu(12, 24, seed=9)
    weights = (swiglu.w1.weight.detach(), swiglu.w3.weight.detach(), swiglu.w2.weight.detach())
    for world_size in (1, 2, 3, 4, 8):
        for rank in range(world_size):
            got = swiglu_shards(*weights, rank, world_size)
            if not isinstance(got, tuple) or len(got) != 3:
                raise AssertionError(f"swiglu_shards should return a tuple (w1_shard, w3_shard, w2_shard), "
                                     f"got {type(got).__name__}")
            for name, actual, expected in zip(("w1", "w3", "w2"), got, reference_shards(*weights, rank,
                                                                                       world_size), strict=True):
                assert_tensor_close(actual, expected, atol=0, rtol=0,
                                    what=f"the {name} shard of rank {rank} of {world_size}")

@EXERCISE.test("swiglu_shards", points=2)
def partial_outputs_of_all_ranks_add_up_to_the_whole_swiglu(swiglu_shards):
    swiglu = random_swiglu(16, 48, seed=10)
    weights = (swiglu.w1.weight.detach(), swiglu.w3.weight.detach(), swiglu.w2.weight.detach())
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    for world_size in (2, 3, 4):
        total = sum(F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)
                    for w1, w3, w2 in (swiglu_shards(*weights, rank, world_size) for rank in range(world_size)))
        assert_tensor_close(total, swiglu(x).detach(), atol=1e-12, rtol=1e-12,
                            what=f"the sum of the {world_size} ranks' partial SwiGLU outputs")

@EXERCISE.test("swiglu_shards", points=1)
def a_hidden_size_that_does_not_split_evenly_is_refused(swiglu_shards):
    swiglu = random_swiglu(8, 10, seed=11)
    weights = (swiglu.w1.weight.detach(), swiglu.w3.weight.detach(), swiglu.w2.weight.detach())
    if not raises_value_error(swiglu_shards, *weights, 0, 4):
        raise AssertionError("a hidden size of 10 over 4 ranks should raise ValueError (10 is not divisible by 4)")

@EXERCISE.test("tensor_parallel_swiglu", points=3)
def every_rank_returns_the_single_process_output_on_two_gloo_processes(tensor_parallel_swiglu):
    cases, expected = [], []
    for seed, (dim, hidden, shape) in enumerate(((16, 32, (2, 7)), (8, 24, (5,)))):
        swiglu = random_swiglu(dim, hidden, seed=20 + seed)
        x = torch.randn(*shape, dim, dtype=torch.float64)
        cases.append((x, swiglu.w1.weight.detach(), swiglu.w3.weight.detach(), swiglu.w2.weight.detach()))
        expected.append(swiglu(x).detach())
    for rank, outputs in enumerate(on_gloo_ranks(tensor_parallel_swiglu, cases)):
        for out, want in zip(outputs, expected, strict=True):
            actual = torch.from_numpy(out) if isinstance(out, numpy.ndarray) else out
            assert_tensor_close(actual, want, atol=1e-12, rtol=1e-12,
                                what=f"the output of rank {rank} for x of shape {tuple(want.shape)}")


EXERCISE.references("swiglu_shards", reference_shards)
EXERCISE.references("tensor_parallel_swiglu", reference_shards)
