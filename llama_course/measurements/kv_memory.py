"""How much memory the KV cache of incremental decoding takes (Llama 2, appendix A.2.1; Ainslie et al. 2023).

During decoding every layer keeps, for every cached token, one key and one value vector of `head_dim`
numbers per KV head. Hence

    bytes = 2 (keys and values) * n_layers * batch_size * n_kv_heads * seq_len * head_dim * bytes_per_number.

The cache grows linearly with the context and the batch, and `n_kv_heads` is the one architectural knob that
shrinks it: multi-head attention (n_kv_heads = n_heads), grouped-query attention (Llama 2 70B: 8 KV heads for
64 query heads, 8 times smaller) and multi-query attention (1 KV head).
"""

import torch

from llama_course.config import ModelConfig


def kv_cache_bytes(
    config: ModelConfig, seq_len: int, batch_size: int = 1, dtype: torch.dtype = torch.float16
) -> int:
    """Exact bytes of the keys and values that `seq_len` cached tokens of `batch_size` sequences occupy.

    Counts the buffers of `llama_course.layers.kv_cache.KVCache` filled to `seq_len` positions, stored in
    `dtype` (fp16 by default, as a model served in half precision stores them); the per-position padding
    flags are bookkeeping and are not counted.
    """
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype={dtype!r} must be a torch.dtype, e.g. torch.float16")
    numbers = 2 * config.n_layers * batch_size * config.n_kv_heads * seq_len * config.head_dim
    return numbers * dtype.itemsize
