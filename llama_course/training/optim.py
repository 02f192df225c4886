"""AdamW with Llama's hyper-parameters and a decay / no-decay split (Llama 1 section 2.2, Llama 2 section 2.2).

Llama trains with AdamW, beta1 = 0.9, beta2 = 0.95, eps = 1e-5, weight decay 0.1 (Loshchilov and Hutter's
decoupled decay: `w <- w - lr * wd * w` apart from the Adam update). The papers do not say which tensors are
decayed. Here:

- decayed: every weight matrix of a linear map (attention wq wk wv wo, FFN w1 w2 w3, the output projection);
- NOT decayed: the RMSNorm gains (any tensor with fewer than 2 dimensions), because pulling a gain toward 0
  rescales a whole layer's input rather than regularising it; and the token embedding, because a row receives
  a gradient only when its token occurs, while decoupled decay shrinks EVERY row at every step, so rare tokens'
  embeddings would decay toward 0 between their occurrences (OLMo 2 drops embedding decay for this reason).

The split is made from module types and shapes, not names, so it works for our `Llama`, for
`transformers.LlamaForCausalLM`, and for models wrapped by DDP or sharded by FSDP2.

The update runs as PyTorch's fused CUDA kernel (one launch for all the parameters of a group) when every
parameter is a plain CUDA tensor, and as the `foreach` implementation (a few launches per group) otherwise: on
the CPU, whose float32 results it keeps, and for FSDP2's DTensor parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.tensor import DTensor


@dataclass(frozen=True)
class AdamWConfig:
    """The paper's optimizer settings; `lr` is the peak learning rate of the schedule."""

    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-5
    weight_decay: float = 0.1

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be positive")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name}={value} must be in [0, 1)")
        if not self.eps > 0:
            raise ValueError(f"eps={self.eps} must be positive")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be >= 0")


def split_decay_parameters(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the parameters that get weight decay and of those that do not (see the module docstring)."""
    embedding_params = {
        id(param) for module in model.modules() if isinstance(module, nn.Embedding) for param in module.parameters()
    }
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.dim() < 2 or id(param) in embedding_params:
            no_decay.append(name)
        else:
            decay.append(name)
    return decay, no_decay


def can_fuse_adamw(parameters: list[torch.Tensor]) -> bool:
    """True when AdamW may use its fused CUDA kernel: every parameter a plain (not DTensor) CUDA tensor."""
    return bool(parameters) and all(p.device.type == "cuda" and not isinstance(p, DTensor) for p in parameters)


def build_optimizer(model: nn.Module, config: AdamWConfig) -> torch.optim.AdamW:
    """AdamW over two parameter groups: weight matrices decayed by `config.weight_decay`, the rest not."""
    decay, no_decay = split_decay_parameters(model)
    params = dict(model.named_parameters())
    groups = [
        {"params": [params[name] for name in decay], "weight_decay": config.weight_decay},
        {"params": [params[name] for name in no_decay], "weight_decay": 0.0},
    ]
    fused = can_fuse_adamw([p for group in groups for p in group["params"]])
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
                             foreach=not fused, fused=fused)
