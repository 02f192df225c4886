"""Model FLOPs utilisation: the fraction of the hardware's matmul throughput that training turns into model math.

Training FLOPs per token (PaLM, appendix B; Chinchilla, appendix F):

    6 * N  +  12 * n_layers * n_heads * head_dim * T

N counts the parameters that multiply activations (every matrix except the token embedding, which is a table
look-up); 6 = 2 (multiply-add) * 3 (forward, plus backward for activations and weights). The second term is
attention's score and value products (QK^T and AV), which have no parameters; T is the sequence length. It
counts the full T x T square, as PaLM does, though a causal kernel may skip half of it.

MFU = achieved FLOP/s / peak FLOP/s. On a GPU the peak is the datasheet's; on a CPU there is no trustworthy
datasheet, so `measure_matmul_flops` measures the peak as the throughput of a large square matmul.
"""

from __future__ import annotations

import time

import torch

from llama_course.config import ModelConfig, count_parameters


def training_flops_per_token(config: ModelConfig, seq_len: int) -> int:
    """`6 N + 12 L H hd T`: forward plus backward FLOPs per trained token (see the module docstring)."""
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be a positive number of tokens")
    n_matmul_params = count_parameters(config, include_embedding=False)
    return 6 * n_matmul_params + 12 * config.n_layers * config.n_heads * config.head_dim * seq_len


def measure_matmul_flops(
    size: int = 2048,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    min_seconds: float = 1.0,
) -> float:
    """FLOP/s of `size x size @ size x size` matmuls, the best of repeated timings over about `min_seconds`.

    Used as the CPU "peak": what this machine's BLAS reaches on the friendliest possible shape.
    """
    device = torch.device(device)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a @ b  # warm-up: thread pools, kernel selection
    synchronize()
    best = float("inf")
    deadline = time.perf_counter() + min_seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def model_flops_utilization(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """Achieved FLOP/s (`tokens_per_second * flops_per_token`) divided by `peak_flops`."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops={peak_flops} must be positive")
    return tokens_per_second * flops_per_token / peak_flops
