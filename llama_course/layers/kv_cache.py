"""The key/value cache of incremental decoding.

Generating token t+1 needs the keys and values of all earlier tokens; recomputing them costs O(t) per step.
The cache keeps them, preallocated for `max_len` positions, so each step only computes the new token. Keys
are stored AFTER RoPE (as in Meta's reference), so cached keys never need re-rotating.
"""

import torch


class KVCache:
    """Per-layer key and value buffers of shape (batch, n_kv_heads, max_len, head_dim), filled left to right.

    `length` counts the positions already written; `key_valid` (batch, max_len) marks which of them are real
    tokens rather than left padding, so attention can skip the padding.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        max_len: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.key_valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.max_len = max_len
        self.length = 0

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new (B, Hkv, T, hd) keys/values after the cached ones; return all keys/values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions needed, cache holds max_len={self.max_len}")
        self.keys[layer_idx][:, :, self.length : end] = k
        self.values[layer_idx][:, :, self.length : end] = v
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def mark_valid(self, valid: torch.Tensor) -> None:
        """Record which of the next valid.shape[1] positions are real tokens (False = padding)."""
        self.key_valid[:, self.length : self.length + valid.shape[1]] = valid

    def advance(self, n: int) -> None:
        """Called once all layers wrote n new positions."""
        self.length += n
