import dataclasses

import pytest
import torch

from llama_course.config import PRESETS
from llama_course.measurements.kv_memory import kv_cache_bytes
from llama_course.model import Llama


def test_llama2_70b_at_4096_tokens_matches_hand_computed_bytes():
    # 2 (K and V) * 80 layers * 8 KV heads * 4096 tokens * 128 head_dim * 2 bytes (fp16) = 1.25 GiB
    assert kv_cache_bytes(PRESETS["llama2-70b"], 4096) == 1_342_177_280


@pytest.mark.parametrize(("n_kv_heads", "expected"), [(64, 10_737_418_240), (8, 1_342_177_280), (1, 167_772_160)])
def test_bytes_are_proportional_to_the_number_of_kv_heads(n_kv_heads, expected):
    config = dataclasses.replace(PRESETS["llama2-70b"], n_kv_heads=n_kv_heads)
    assert kv_cache_bytes(config, 4096) == expected


def test_llama2_7b_takes_half_a_mebibyte_per_token_in_fp16():
    # 2 * 32 layers * 32 heads * 128 * 2 bytes = 524,288 bytes per token
    assert kv_cache_bytes(PRESETS["llama2-7b"], 1) == 524_288
    assert kv_cache_bytes(PRESETS["llama2-7b"], 4096, batch_size=3) == 3 * 4096 * 524_288


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_matches_the_buffers_of_a_filled_kv_cache(dtype):
    model = Llama(PRESETS["tiny"]).to(dtype)
    batch_size, seq_len = 2, 37
    cache = model.new_cache(batch_size, max_len=seq_len)
    allocated = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
    assert kv_cache_bytes(model.config, seq_len, batch_size, dtype) == allocated


def test_float32_doubles_fp16():
    config = PRESETS["small"]
    assert kv_cache_bytes(config, 100, dtype=torch.float32) == 2 * kv_cache_bytes(config, 100)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"seq_len": 0}, "seq_len=0"),
    ({"seq_len": 10, "batch_size": -1}, "batch_size=-1"),
    ({"seq_len": 2.5}, "seq_len=2.5"),
])
def test_rejects_non_positive_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kv_cache_bytes(PRESETS["tiny"], **kwargs)


def test_rejects_a_dtype_that_is_not_a_torch_dtype():
    with pytest.raises(TypeError, match="torch.float16"):
        kv_cache_bytes(PRESETS["tiny"], 8, dtype="float16")
