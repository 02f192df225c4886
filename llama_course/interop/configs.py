"""Translate a `ModelConfig` to and from Hugging Face's `config.json` and Meta's `params.json`.

The three formats describe the same architecture with different names. The one real difference is the FFN
width: Meta and `ModelConfig` store the RULE (`multiple_of`, `ffn_dim_multiplier`, Llama 1 section 2.2), Hugging
Face stores its RESULT (`intermediate_size`). Going from a width back to a rule is `ffn_rule_for_hidden_dim`.
"""

from typing import Any

import torch

from llama_course.config import ModelConfig
from llama_course.layers.swiglu import ffn_hidden_dim

# config.json keys that our exports add so that a round trip gives back the same FFN rule (HF ignores them).
HF_RULE_KEYS = ("multiple_of", "ffn_dim_multiplier")

HF_REQUIRED_KEYS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size")

# params.json keys Meta's reference code reads; `max_batch_size` only sizes its KV cache.
META_PARAM_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
                   "norm_eps", "rope_theta", "max_seq_len", "max_batch_size")


def ffn_rule_for_hidden_dim(dim: int, hidden_dim: int) -> tuple[int, float | None]:
    """A (multiple_of, ffn_dim_multiplier) pair for which `ffn_hidden_dim(dim, ...)` equals `hidden_dim`.

    Prefers no multiplier and the largest power-of-two `multiple_of` dividing `hidden_dim` (TinyLlama's 5632
    for dim 2048 gives (512, None)); otherwise the multiplier with the fewest decimals that works (Llama 2 70B's
    28672 for dim 8192 gives (4096, 1.3), as in Meta's params.json).
    """
    if dim <= 0 or hidden_dim <= 0:
        raise ValueError(f"dim={dim} and hidden_dim={hidden_dim} must both be positive")
    multiple_of = hidden_dim & -hidden_dim  # the largest power of two dividing hidden_dim
    if ffn_hidden_dim(dim, multiple_of) == hidden_dim:
        return multiple_of, None
    base = int(2 * 4 * dim / 3)
    for decimals in range(1, 7):
        multiplier = round(hidden_dim / base, decimals)
        if multiplier > 0 and ffn_hidden_dim(dim, multiple_of, multiplier) == hidden_dim:
            return multiple_of, multiplier
    raise ValueError(
        f"intermediate_size={hidden_dim} for dim={dim} cannot be written as the Llama FFN rule "
        "(multiple_of, ffn_dim_multiplier); ModelConfig would need an explicit FFN width field"
    )


def _rope_theta_from_hf(hf: dict[str, Any]) -> float:
    """rope_theta from either transformers 5's `rope_parameters` or the older top-level `rope_theta`."""
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default" or scaling:
        raise ValueError(
            f"RoPE scaling {scaling or rope} is not supported: llama_course implements Llama 1/2's plain RoPE "
            "(rope_type 'default', no rope_scaling)"
        )
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config_from_hf(hf: dict[str, Any], *, attention_backend: str = "sdpa") -> ModelConfig:
    """The `ModelConfig` of a Hugging Face `LlamaForCausalLM` config.json (as a dict)."""
    model_type = hf.get("model_type", "llama")
    if model_type != "llama":
        raise ValueError(f"model_type={model_type!r} is not a Llama; only model_type='llama' can be converted")
    checks = {
        "tie_word_embeddings": (False, "Llama 1/2 have an untied output head"),
        "attention_bias": (False, "Llama has no biases"),
        "mlp_bias": (False, "Llama has no biases"),
        "hidden_act": ("silu", "the SwiGLU FFN gates with SiLU"),
    }
    missing = [key for key in HF_REQUIRED_KEYS if key not in hf]
    if missing:
        raise ValueError(f"config.json lacks {missing}: is it the config of a LlamaForCausalLM?")
    for key in HF_REQUIRED_KEYS:
        if not isinstance(hf[key], int) or isinstance(hf[key], bool) or hf[key] <= 0:
            raise ValueError(f"config.json has {key}={hf[key]!r}: it must be a positive integer")
    for key, (expected, reason) in checks.items():
        if key in hf and hf[key] != expected:
            raise ValueError(f"{key}={hf[key]!r} is not supported ({reason}); it must be {expected!r}")
    dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") is not None and dim % n_heads == 0 and hf["head_dim"] != dim // n_heads:
        raise ValueError(
            f"head_dim={hf['head_dim']} differs from hidden_size / num_attention_heads = {dim // n_heads}; "
            "llama_course requires head_dim = dim / n_heads"
        )
    hidden_dim = hf["intermediate_size"]
    if all(key in hf for key in HF_RULE_KEYS):
        multiple_of, multiplier = hf["multiple_of"], hf["ffn_dim_multiplier"]
        if ffn_hidden_dim(dim, multiple_of, multiplier) != hidden_dim:
            raise ValueError(
                f"config.json's multiple_of={multiple_of}, ffn_dim_multiplier={multiplier} give an FFN width of "
                f"{ffn_hidden_dim(dim, multiple_of, multiplier)}, not intermediate_size={hidden_dim}; "
                "delete those two keys to derive them from intermediate_size"
            )
    else:
        multiple_of, multiplier = ffn_rule_for_hidden_dim(dim, hidden_dim)
    return ModelConfig(
        dim=dim,
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        vocab_size=hf["vocab_size"],
        multiple_of=multiple_of,
        ffn_dim_multiplier=multiplier,
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=_rope_theta_from_hf(hf),
        max_seq_len=hf.get("max_position_embeddings", 2048),
        attention_backend=attention_backend,
    )


def check_exportable(config: ModelConfig, target: str) -> None:
    """Refuse a config whose architecture fields the Llama formats cannot state (both hold Llama's choices only)."""
    if config.architecture_variants:
        raise ValueError(f"the {target} format describes Llama's own architecture only, not "
                         f"{config.architecture_variants}; keep such a model in llama_course's folder format")


def hf_config_from_model_config(config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """A config.json dict that `transformers.LlamaConfig` reads (old and new releases alike)."""
    check_exportable(config, "Hugging Face")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},  # transformers >= 5
        "max_position_embeddings": config.max_seq_len,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),  # transformers < 5
        "dtype": str(dtype).removeprefix("torch."),
        "multiple_of": config.multiple_of,
        "ffn_dim_multiplier": config.ffn_dim_multiplier,
    }


def model_config_from_meta_params(
    params: dict[str, Any],
    *,
    vocab_size: int | None = None,
    max_seq_len: int | None = None,
    attention_backend: str = "sdpa",
) -> ModelConfig:
    """The `ModelConfig` of a Meta params.json (as a dict).

    Meta's files hold `vocab_size: -1` (the tokenizer decides) and no context length (chosen when the model is
    built: 2048 for Llama 1, 4096 for Llama 2); pass them here, or `vocab_size` is required in `params`.
    """
    unknown = sorted(set(params) - set(META_PARAM_KEYS))
    if unknown:
        raise ValueError(f"params.json has keys {unknown} that llama_course does not implement; known: "
                         f"{list(META_PARAM_KEYS)}")
    if params.get("vocab_size", -1) not in (-1, None) and vocab_size not in (None, params["vocab_size"]):
        raise ValueError(f"vocab_size={vocab_size} contradicts params.json's vocab_size={params['vocab_size']}")
    vocab = vocab_size if params.get("vocab_size", -1) in (-1, None) else params["vocab_size"]
    if vocab is None:
        raise ValueError("params.json has vocab_size=-1; pass vocab_size (the tokenizer's, 32000 for Llama 1/2)")
    values = {key: params[key] for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of",
                                           "ffn_dim_multiplier", "norm_eps", "rope_theta") if key in params}
    seq_len = max_seq_len or params.get("max_seq_len")
    if seq_len is not None:
        values["max_seq_len"] = seq_len
    return ModelConfig(vocab_size=vocab, attention_backend=attention_backend, **values)


def meta_params_from_model_config(config: ModelConfig) -> dict[str, Any]:
    """A Meta-style params.json dict (with vocab_size and max_seq_len filled in, which Meta leaves out)."""
    check_exportable(config, "Meta")
    params = {key: getattr(config, key) for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size",
                                                    "multiple_of", "ffn_dim_multiplier", "norm_eps",
                                                    "rope_theta", "max_seq_len")}
    if params["ffn_dim_multiplier"] is None:
        del params["ffn_dim_multiplier"]
    return params
