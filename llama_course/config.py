"""Model configurations: the paper's presets (Llama 1 Table 2, Llama 2 Table 1) and tiny laptop ones.

Facts from PAPER_FACTS.md: vocabulary 32,000; context 2048 (Llama 1) or 4096 (Llama 2); RMSNorm eps 1e-6
(Llama 1 params) or 1e-5 (Llama 2); FFN hidden size from `ffn_hidden_dim`; grouped-query attention with 8 KV
heads for Llama 2 70B only.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from llama_course.layers.attention import ATTENTION_BACKENDS
from llama_course.layers.swiglu import ffn_hidden_dim

ATTENTION_BACKEND_NAMES = tuple(ATTENTION_BACKENDS)  # the registry is the one list of backends


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of one Llama. Validated when built; use `dataclasses.replace` to derive a variant."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None  # None: as many as n_heads (multi-head attention)
    vocab_size: int = 32000
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    attention_backend: str = "sdpa"

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} (dim / n_heads) must be even for rotary embeddings")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        for name in ("norm_eps", "rope_theta", "ffn_dim_multiplier"):
            value = getattr(self, name)
            if name == "ffn_dim_multiplier" and value is None:
                continue
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive finite number"
                                 + (" or None" if name == "ffn_dim_multiplier" else ""))
        if not isinstance(self.attention_backend, str) or self.attention_backend not in ATTENTION_BACKEND_NAMES:
            raise ValueError(
                f"attention_backend={self.attention_backend!r} is unknown; choose one of {ATTENTION_BACKEND_NAMES}"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """Width of the SwiGLU FFN (11008 for 7B)."""
        return ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        if not isinstance(values, dict):
            raise ValueError(f"a model config must be a JSON object of fields, got {type(values).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**values)


def _llama1(dim: int, n_layers: int, n_heads: int) -> ModelConfig:
    return ModelConfig(dim=dim, n_layers=n_layers, n_heads=n_heads, norm_eps=1e-6, max_seq_len=2048)


def _llama2(dim: int, n_layers: int, n_heads: int, **kwargs: Any) -> ModelConfig:
    return ModelConfig(dim=dim, n_layers=n_layers, n_heads=n_heads, norm_eps=1e-5, max_seq_len=4096, **kwargs)


PRESETS: dict[str, ModelConfig] = {
    "llama1-7b": _llama1(4096, 32, 32),
    "llama1-13b": _llama1(5120, 40, 40),
    "llama1-33b": _llama1(6656, 60, 52),
    "llama1-65b": _llama1(8192, 80, 64),
    "llama2-7b": _llama2(4096, 32, 32),
    "llama2-13b": _llama2(5120, 40, 40),
    "llama2-70b": _llama2(8192, 80, 64, n_kv_heads=8, ffn_dim_multiplier=1.3, multiple_of=4096),
    # Laptop scale, for the toy world's tokenizer (vocabulary 1024); GQA kept so every mechanism is exercised.
    "tiny": ModelConfig(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=1024, multiple_of=32,
                        max_seq_len=512),
    "small": ModelConfig(dim=256, n_layers=6, n_heads=8, n_kv_heads=4, vocab_size=1024, multiple_of=32,
                         max_seq_len=512),
    # llama2.c's stories15M shape with Llama's 32k vocabulary (24.4M parameters): the benchmark config.
    "bench-24m": ModelConfig(dim=288, n_layers=6, n_heads=6, vocab_size=32000, multiple_of=32, max_seq_len=256),
}


def count_parameters(config: ModelConfig, *, include_embedding: bool = True) -> int:
    """Exact parameter count: 2*V*d + d + L*(2*d*H*hd + 2*d*Hkv*hd + 3*d*hidden + 2*d) (untied embeddings).

    With `include_embedding=False` the token embedding (V*d) is left out, as in the FLOPs formula 6N.
    """
    d, hd = config.dim, config.head_dim
    per_layer = 2 * d * config.n_heads * hd + 2 * d * config.n_kv_heads * hd + 3 * d * config.hidden_dim + 2 * d
    embedding = config.vocab_size * d
    total = 2 * embedding + d + config.n_layers * per_layer
    return total if include_embedding else total - embedding
