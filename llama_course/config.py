"""Model configurations: the paper's presets (Llama 1 Table 2, Llama 2 Table 1) and tiny laptop ones.

Facts from PAPER_FACTS.md: vocabulary 32,000; context 2048 (Llama 1) or 4096 (Llama 2); RMSNorm eps 1e-6
(Llama 1 params) or 1e-5 (Llama 2); FFN hidden size from `ffn_hidden_dim`; grouped-query attention with 8 KV
heads for Llama 2 70B only.

The architecture fields `norm_type`, `norm_placement`, `ffn_activation`, `position_encoding` and
`position_interpolation` default to Llama's choices; the other values are the alternatives the chapters'
ablations train (`llama_course/experiments/ablation.py`). A config at those defaults serialises exactly as it
did before the fields existed: `to_dict` lists a variant field only when it differs from Llama's choice.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from llama_course.layers.attention import ATTENTION_BACKENDS
from llama_course.layers.rmsnorm import NORM_TYPES
from llama_course.layers.swiglu import FFN_ACTIVATIONS, ffn_hidden_dim, non_gated_hidden_dim

ATTENTION_BACKEND_NAMES = tuple(ATTENTION_BACKENDS)  # the registry is the one list of backends
NORM_PLACEMENTS = ("pre", "post")  # pre: x + f(norm(x)) (Llama, GPT-2); post: norm(x + f(x)) (Vaswani et al.)
POSITION_ENCODINGS = ("rope", "learned", "none")  # rotary (Llama), a learned absolute table (GPT-2), none
# The architecture fields and Llama's choice for each: the first value of each list of alternatives.
LLAMA_ARCHITECTURE = {"norm_type": NORM_TYPES[0], "norm_placement": NORM_PLACEMENTS[0],
                      "ffn_activation": FFN_ACTIVATIONS[0], "position_encoding": POSITION_ENCODINGS[0],
                      "position_interpolation": 1.0}
_CHOICES = {"norm_type": NORM_TYPES, "norm_placement": NORM_PLACEMENTS, "ffn_activation": FFN_ACTIVATIONS,
            "position_encoding": POSITION_ENCODINGS}


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
    norm_type: str = "rmsnorm"
    norm_placement: str = "pre"
    ffn_activation: str = "swiglu"  # gelu / relu: a two-matrix FFN with as many weights (`hidden_dim`)
    position_encoding: str = "rope"
    position_interpolation: float = 1.0  # RoPE positions are divided by this (Chen et al., 2023); 1 = plain

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
        for name in ("norm_eps", "rope_theta", "ffn_dim_multiplier", "position_interpolation"):
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
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r} is unknown; choose one of {choices}")
        if self.position_interpolation != 1.0 and self.position_encoding != "rope":
            raise ValueError(f"position_interpolation={self.position_interpolation} scales rotary positions; "
                             f"position_encoding={self.position_encoding!r} has none: use 1.0 or 'rope'")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """Width of the FFN: Llama's SwiGLU rule (11008 for 7B), or 3/2 of it for a two-matrix FFN."""
        gated = ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)
        return gated if self.ffn_activation == "swiglu" else non_gated_hidden_dim(gated)

    @property
    def architecture_variants(self) -> dict[str, Any]:
        """The architecture fields that differ from Llama's choice ({} for every Llama)."""
        return {name: getattr(self, name) for name, value in LLAMA_ARCHITECTURE.items()
                if getattr(self, name) != value}

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        return {name: value for name, value in values.items()
                if name not in LLAMA_ARCHITECTURE or name in self.architecture_variants}

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
    # GPU throughput benchmarks (benchmarks/gpu_throughput.py): GPT-2 medium's shape and TinyLlama 1.1B's.
    "bench-374m": ModelConfig(dim=1024, n_layers=24, n_heads=16, max_seq_len=2048),
    "bench-1.1b": ModelConfig(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, max_seq_len=2048),
}


def count_parameters(config: ModelConfig, *, include_embedding: bool = True) -> int:
    """Exact parameter count: 2*V*d + d + L*(2*d*H*hd + 2*d*Hkv*hd + 3*d*hidden + 2*d) (untied embeddings).

    Variants: a two-matrix FFN has 2*d*hidden, a LayerNorm 2*d (gain and bias), post-norm no final norm,
    learned positions a (max_seq_len, d) table. With `include_embedding=False` the token embedding (V*d) is
    left out, as in the FLOPs formula 6N.
    """
    d, hd = config.dim, config.head_dim
    norm = d if config.norm_type == "rmsnorm" else 2 * d
    ffn_matrices = 3 if config.ffn_activation == "swiglu" else 2
    per_layer = (2 * d * config.n_heads * hd + 2 * d * config.n_kv_heads * hd
                 + ffn_matrices * d * config.hidden_dim + 2 * norm)
    embedding = config.vocab_size * d
    final_norm = norm if config.norm_placement == "pre" else 0
    positions = config.max_seq_len * d if config.position_encoding == "learned" else 0
    total = 2 * embedding + final_norm + positions + config.n_layers * per_layer
    return total if include_embedding else total - embedding
