"""Tests of exercise 5: grouped-query attention's repeat_kv, the causal mask, the KV cache and its size.

Llama 2, section 2.2 and appendix A.2.1 (grouped-query attention, Ainslie et al. 2023).
"""

import dataclasses

import torch

from llama_course.config import PRESETS, ModelConfig, count_parameters
from llama_course.experiments.ablation import SWEEPS, matched_ffn
from llama_course.grading.assertions import assert_equal, assert_tensor_close
from llama_course.grading.registry import Exercise
from llama_course.layers.attention import causal_mask, repeat_kv
from llama_course.layers.kv_cache import KVCache
from llama_course.measurements.kv_memory import kv_cache_bytes

EXERCISE = Exercise(chapter=5, name="05_gqa_kv_cache", title="Grouped-query attention and the KV cache")


def random_kv(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@EXERCISE.test("repeat_kv", points=2)
def repeat_kv_matches_the_reference(repeat_kv_student):
    x = random_kv(0, (2, 3, 5, 4))
    for n_rep in (1, 2, 4):
        assert_tensor_close(repeat_kv_student(x, n_rep), repeat_kv(x, n_rep), atol=0.0, rtol=0.0,
                            what=f"repeat_kv(x, n_rep={n_rep})")


@EXERCISE.test("repeat_kv", points=1)
def query_head_h_reads_kv_head_h_over_n_rep(repeat_kv_student):
    x = random_kv(1, (1, 2, 3, 4))
    repeated = repeat_kv_student(x, 3)
    for h in range(6):
        assert_tensor_close(repeated[:, h], x[:, h // 3], atol=0.0, rtol=0.0, what=f"head {h} of repeat_kv(x, 3)")


@EXERCISE.test("causal_mask", points=2)
def causal_mask_matches_the_reference(causal_mask_student):
    for q_len, kv_len, offset in ((5, 5, 0), (3, 7, 4), (2, 9, 2)):
        got = causal_mask_student(q_len, kv_len, offset)
        assert_tensor_close(got, causal_mask(q_len, kv_len, offset), atol=0.0, rtol=0.0,
                            what=f"causal_mask({q_len}, {kv_len}, offset={offset})")


@EXERCISE.test("causal_mask", points=1)
def one_new_token_attends_to_every_cached_token(causal_mask_student):
    got = causal_mask_student(1, 13, 12)
    assert_tensor_close(got, torch.ones(1, 13, dtype=torch.bool), atol=0.0, rtol=0.0,
                        what="the mask of one query after 12 cached tokens")


def reference_cache(max_len: int, length: int, seed: int) -> KVCache:
    cache = KVCache(1, 2, max_len, 3, 4, dtype=torch.float64)
    cache.update(0, random_kv(seed, (2, 3, length, 4)), random_kv(seed + 1, (2, 3, length, 4)))
    cache.advance(length)
    return cache


@EXERCISE.test("update_cache", points=2)
def update_returns_what_the_reference_cache_returns(update_cache):
    reference = reference_cache(max_len=10, length=4, seed=2)
    keys, values = reference.keys[0].clone(), reference.values[0].clone()
    new_k, new_v = random_kv(4, (2, 3, 3, 4)), random_kv(5, (2, 3, 3, 4))
    got_k, got_v = update_cache(keys, values, new_k, new_v, 4)
    expected_k, expected_v = reference.update(0, new_k, new_v)
    assert_tensor_close(got_k, expected_k, atol=0.0, rtol=0.0, what="the returned keys")
    assert_tensor_close(got_v, expected_v, atol=0.0, rtol=0.0, what="the returned values")


@EXERCISE.test("update_cache", points=1)
def update_writes_into_the_preallocated_buffers(update_cache):
    keys, values = torch.zeros(1, 2, 8, 4, dtype=torch.float64), torch.zeros(1, 2, 8, 4, dtype=torch.float64)
    new_k, new_v = random_kv(6, (1, 2, 2, 4)), random_kv(7, (1, 2, 2, 4))
    update_cache(keys, values, new_k, new_v, 5)
    assert_tensor_close(keys[:, :, 5:7], new_k, atol=0.0, rtol=0.0, what="keys[:, :, 5:7] after the update")
    assert_tensor_close(values[:, :, 5:7], new_v, atol=0.0, rtol=0.0, what="values[:, :, 5:7] after the update")
    assert_tensor_close(keys[:, :, :5].abs().sum(), torch.tensor(0.0, dtype=torch.float64), atol=0.0,
                        what="the sum of |keys| before position 5 (they must stay untouched)")


@EXERCISE.test("update_cache", points=1)
def update_past_max_len_raises_value_error(update_cache):
    keys, values = torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2)
    try:
        update_cache(keys, values, torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2), 3)
    except ValueError:
        return
    raise AssertionError("writing 2 positions after 3 cached ones into a cache of max_len=4 should raise ValueError")


@EXERCISE.test("kv_cache_size_bytes", points=2)
def cache_size_matches_the_reference_for_the_llama_presets(kv_cache_size_bytes):
    for name, seq_len, batch_size, dtype in (("llama2-7b", 4096, 1, torch.float16),
                                             ("llama2-70b", 4096, 8, torch.float16),
                                             ("llama1-13b", 2048, 3, torch.float32)):
        config = PRESETS[name]
        got = kv_cache_size_bytes(config.n_layers, config.n_kv_heads, config.head_dim, seq_len, batch_size,
                                  dtype.itemsize)
        assert_equal(got, kv_cache_bytes(config, seq_len, batch_size, dtype),
                     what=f"the cache of {name} for {batch_size} x {seq_len} tokens in {dtype}")


@EXERCISE.test("kv_cache_size_bytes", points=1)
def fewer_kv_heads_shrink_the_cache_proportionally(kv_cache_size_bytes):
    mha, gqa, mqa = (kv_cache_size_bytes(80, n_kv_heads, 128, 4096, 1, 2) for n_kv_heads in (64, 8, 1))
    assert_equal((mha // gqa, mha // mqa, mha % gqa, mha % mqa), (8, 64, 0, 0),
                 what="(MHA / GQA, MHA / MQA, remainders) for 64, 8 and 1 KV heads")



@EXERCISE.test("matched_ffn_width", points=2)
def gives_the_widths_of_the_shipped_ablation(matched_ffn_width):
    sweep = SWEEPS["attention"]
    mha = sweep.config(sweep.variants[0])
    for variant in sweep.variants:
        config = sweep.config(variant)
        got = matched_ffn_width(config.dim, config.n_heads, config.n_kv_heads, mha.hidden_dim)
        assert_equal(got, config.hidden_dim, what=f"matched_ffn_width for {variant.name}")


@EXERCISE.test("matched_ffn_width", points=1)
def keeps_the_parameter_count_of_larger_models(matched_ffn_width):
    for dim, n_heads, n_kv_heads in ((4096, 32, 8), (512, 8, 1), (768, 12, 4)):
        mha = ModelConfig(dim=dim, n_layers=2, n_heads=n_heads, multiple_of=1)
        grouped = dataclasses.replace(mha, n_kv_heads=n_kv_heads)
        width = dataclasses.replace(grouped, **matched_ffn(grouped, count_parameters(mha))).hidden_dim
        got = matched_ffn_width(dim, n_heads, n_kv_heads, mha.hidden_dim)
        assert_equal(got, width, what=f"matched_ffn_width({dim}, {n_heads}, {n_kv_heads}, {mha.hidden_dim})")

EXERCISE.references("repeat_kv", repeat_kv)
EXERCISE.references("causal_mask", causal_mask)
EXERCISE.references("update_cache", KVCache)
EXERCISE.references("kv_cache_size_bytes", kv_cache_bytes)
EXERCISE.references("matched_ffn_width", matched_ffn)
