"""Tests of exercise 4: rotary position embeddings in both conventions (Su et al. 2021; Llama 1, section 2.2)."""

import numpy as np
import torch

from llama_course.experiments.ablation import extension_summary, load_results
from llama_course.grading.assertions import assert_number_close, assert_tensor_close
from llama_course.grading.registry import Exercise
from llama_course.layers.rope import (
    apply_rope_interleaved,
    apply_rope_rotate_half,
    permute_meta_to_hf,
    rope_angles,
)

EXERCISE = Exercise(chapter=4, name="04_rope", title="Rotary position embeddings")


def random_queries(seed: int, shape: tuple[int, ...] = (2, 3, 6, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def angles(positions, head_dim: int = 8, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    return rope_angles(torch.as_tensor(positions, dtype=torch.float64), head_dim, theta)


def score_by_position(apply_rope, q: torch.Tensor, k: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """<rotate(q, position m), rotate(k, position n)> for vectors q, k of shape (head_dim,)."""
    cos_m, sin_m = angles([m], q.shape[-1])
    cos_n, sin_n = angles([n], k.shape[-1])
    return (apply_rope(q[None], cos_m, sin_m) * apply_rope(k[None], cos_n, sin_n)).sum()


@EXERCISE.test("rope_angles", points=2)
def matches_the_reference_in_float64(rope_angles_student):
    positions = torch.tensor([[0, 1, 2, 7], [5, 100, 2047, 4095]], dtype=torch.float64)
    for theta in (10000.0, 500000.0):
        cos, sin = rope_angles_student(positions, 16, theta)
        expected_cos, expected_sin = rope_angles(positions, 16, theta)
        assert_tensor_close(cos, expected_cos, atol=1e-9, rtol=1e-9, what=f"cos (theta={theta:g})")
        assert_tensor_close(sin, expected_sin, atol=1e-9, rtol=1e-9, what=f"sin (theta={theta:g})")


@EXERCISE.test("rope_angles", points=1)
def first_pair_turns_one_radian_per_position(rope_angles_student):
    positions = torch.arange(5, dtype=torch.float64)
    cos, sin = rope_angles_student(positions, 8, 10000.0)
    assert_tensor_close(cos[:, 0], positions.cos(), atol=1e-12, what="cos of the first pair's angle")
    assert_tensor_close(sin[:, 0], positions.sin(), atol=1e-12, what="sin of the first pair's angle")


@EXERCISE.test("apply_rope_interleaved", points=2)
def interleaved_matches_the_reference(apply_rope_interleaved_student):
    x = random_queries(0)
    cos, sin = angles(torch.arange(3, 9))
    assert_tensor_close(apply_rope_interleaved_student(x, cos, sin), apply_rope_interleaved(x, cos, sin),
                        atol=1e-12, rtol=1e-10)


@EXERCISE.test("apply_rope_interleaved", points=2)
def interleaved_score_depends_only_on_the_relative_position(apply_rope_interleaved_student):
    q, k = random_queries(1, (8,)), random_queries(2, (8,))
    for m, n in ((3, 0), (10, 7), (53, 50)):
        score = score_by_position(apply_rope_interleaved_student, q, k, m, n)
        expected = score_by_position(apply_rope_interleaved, q, k, 3, 0)
        assert_tensor_close(score, expected, atol=1e-9, what=f"the score of a query at {m} and a key at {n}")


@EXERCISE.test("apply_rope_interleaved", points=1)
def interleaved_rotation_preserves_the_norm(apply_rope_interleaved_student):
    x = random_queries(3)
    cos, sin = angles(torch.arange(6) * 17)
    rotated = apply_rope_interleaved_student(x, cos, sin)
    assert_tensor_close(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-10, what="the norm of each rotated vector")


@EXERCISE.test("apply_rope_rotate_half", points=2)
def rotate_half_matches_the_reference(apply_rope_rotate_half_student):
    x = random_queries(4)
    cos, sin = angles(torch.arange(6) + 11)
    assert_tensor_close(apply_rope_rotate_half_student(x, cos, sin), apply_rope_rotate_half(x, cos, sin),
                        atol=1e-12, rtol=1e-10)


@EXERCISE.test("apply_rope_rotate_half", points=1)
def rotate_half_score_depends_only_on_the_relative_position(apply_rope_rotate_half_student):
    q, k = random_queries(5, (8,)), random_queries(6, (8,))
    for m, n in ((4, 1), (21, 18)):
        score = score_by_position(apply_rope_rotate_half_student, q, k, m, n)
        expected = score_by_position(apply_rope_rotate_half, q, k, 3, 0)
        assert_tensor_close(score, expected, atol=1e-9, what=f"the score of a query at {m} and a key at {n}")


@EXERCISE.test("permute_meta_to_hf", points=2)
def permutation_matches_the_reference(permute_meta_to_hf_student):
    weight = random_queries(7, (3 * 8, 5))
    assert_tensor_close(permute_meta_to_hf_student(weight, 3), permute_meta_to_hf(weight, 3), atol=0.0, rtol=0.0)


@EXERCISE.test("permute_meta_to_hf", points=2)
def permuted_weights_give_the_same_scores_with_rotate_half(permute_meta_to_hf_student):
    n_heads, head_dim, dim = 2, 8, 6
    wq, wk, x = random_queries(8, (n_heads * head_dim, dim)), random_queries(9, (n_heads * head_dim, dim)), \
        random_queries(10, (5, dim))
    cos, sin = angles(torch.arange(5), head_dim)

    def scores(wq, wk, apply_rope):
        q = apply_rope((x @ wq.T).view(5, n_heads, head_dim).transpose(0, 1), cos, sin)  # (H, T, hd)
        k = apply_rope((x @ wk.T).view(5, n_heads, head_dim).transpose(0, 1), cos, sin)
        return q @ k.transpose(-2, -1)  # (H, T, T)

    meta = scores(wq, wk, apply_rope_interleaved)
    hf = scores(permute_meta_to_hf_student(wq, n_heads), permute_meta_to_hf_student(wk, n_heads),
                apply_rope_rotate_half)
    assert_tensor_close(hf, meta, atol=1e-9, rtol=1e-9, what="the rotate_half scores with your permuted weights")



@EXERCISE.test("interpolation_gain", points=1)
def averages_positions_from_the_block_size_on(interpolation_gain):
    before = [[5.0, 5.0, 9.0, 7.0], [5.0, 5.0, 7.0, 5.0]]  # two batches, four positions
    after = [[1.0, 1.0, 4.0, 4.0], [9.0, 9.0, 4.0, 4.0]]
    extension = {"interpolated before": before, "interpolated after": after}
    assert_number_close(interpolation_gain(extension, 2), 3.0, what="interpolation_gain at block size 2")


@EXERCISE.test("interpolation_gain", points=1)
def reads_the_shipped_extension(interpolation_gain):
    results = load_results("positions")
    block = results["sweep"]["settings"]["block_size"]
    extension = results["runs"]["RoPE"][0]["extension"]
    expected = float(np.mean(np.array(extension["interpolated before"])[:, block:])
                     - np.mean(np.array(extension["interpolated after"])[:, block:]))
    assert_number_close(interpolation_gain(extension, block), expected, tolerance=1e-9,
                        what="interpolation_gain of the shipped RoPE model (seed 0)")

EXERCISE.references("rope_angles", rope_angles)
EXERCISE.references("apply_rope_interleaved", apply_rope_interleaved)
EXERCISE.references("apply_rope_rotate_half", apply_rope_rotate_half)
EXERCISE.references("permute_meta_to_hf", permute_meta_to_hf)
EXERCISE.references("interpolation_gain", extension_summary)

