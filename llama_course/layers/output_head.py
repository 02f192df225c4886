"""The output projection (hidden state -> one logit per vocabulary word), with a faster layout for decoding on CPUs.

The projection is an ordinary bias-free `nn.Linear` with weight (vocab_size, dim): the same parameter, state
dict and matmul as everywhere else (in training the loss is fused with it, `layers/cross_entropy.py`). Only
decoding differs. Each decoding step multiplies ONE hidden vector by the whole weight, which is bound by memory
bandwidth, and PyTorch's CPU BLAS (MKL) streams a (vocab, dim) row-major weight used as `weight.T` at well under
half the speed it streams the same numbers stored as (dim, vocab): measured on 2 AMD EPYC cores, vocab 32000 x
dim 288, 4.5 ms against 1.8 ms per token, the single largest cost of a decoding step.

So `generate` runs inside `head.decoding()`: for that block, whose weights do not change, inference on a CPU
multiplies by a (dim, vocab) copy of the weight, made on entry and freed on exit. The copy costs vocab x dim
memory while it lives (for Llama 2 7B, 262 MB next to 13.5 GB of weights). Logits equal `F.linear`'s up to the
order of float rounding.
"""

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor


class OutputHead(nn.Linear):
    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__(dim, vocab_size, bias=False)
        self._decoding_weight: torch.Tensor | None = None  # (dim, vocab) copy, only inside `decoding()`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._decoding_weight is not None and not torch.is_grad_enabled():
            return x @ self._decoding_weight
        return F.linear(x, self.weight)

    @contextlib.contextmanager
    def decoding(self) -> Iterator[None]:
        """A block of inference calls with fixed weights (one `generate`); on a CPU they use the faster layout."""
        weight = self.weight
        if weight.device.type != "cpu" or isinstance(weight, DTensor) or self._decoding_weight is not None:
            yield  # GPU BLAS has no such penalty; a sharded weight has no local copy; a nested block reuses it
            return
        self._decoding_weight = weight.detach().T.contiguous()
        try:
            yield
        finally:
            self._decoding_weight = None
