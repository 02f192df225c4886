"""Where a Llama's parameters go: embedding, attention, feed-forward, norms and output head.

The exact total is `config.count_parameters`; this module splits it into the groups a reader reasons about
(Llama 1, Table 2; Llama 2, Table 1). Per layer: attention `wq, wo` (d x H hd each) and `wk, wv`
(d x Hkv hd each: grouped-query attention shrinks these); SwiGLU `w1, w2, w3` (d x hidden each); two RMSNorm
gains (d each). Plus the token embedding (V x d), the final norm (d) and the untied output head (V x d).
`parameter_groups_of_model` measures the same split on an instantiated model, by parameter name.
"""

from __future__ import annotations

from torch import nn

from llama_course.config import ModelConfig

GROUPS = ("embedding", "attention", "feed_forward", "norms", "output")


def parameter_breakdown(config: ModelConfig) -> dict[str, int]:
    """Parameter count of each group in `GROUPS`, from the configuration alone (sums to count_parameters)."""
    d, hd, layers = config.dim, config.head_dim, config.n_layers
    return {
        "embedding": config.vocab_size * d,
        "attention": layers * (2 * d * config.n_heads * hd + 2 * d * config.n_kv_heads * hd),
        "feed_forward": layers * 3 * d * config.hidden_dim,
        "norms": layers * 2 * d + d,
        "output": config.vocab_size * d,
    }


def group_of(parameter_name: str) -> str:
    """The group of a parameter, by Meta's names (`tok_embeddings`, `attention.wq`, `feed_forward.w1`, ...)."""
    if parameter_name.startswith("tok_embeddings."):
        return "embedding"
    if parameter_name.startswith("output."):
        return "output"
    if ".attention." in parameter_name:
        return "attention"
    if ".feed_forward." in parameter_name:
        return "feed_forward"
    if "norm" in parameter_name:
        return "norms"
    raise ValueError(f"parameter {parameter_name!r} belongs to none of {GROUPS}; is this a Llama?")


def parameter_groups_of_model(model: nn.Module) -> dict[str, int]:
    """The same split counted on a model's parameters (works on the meta device: no memory is allocated)."""
    counts = dict.fromkeys(GROUPS, 0)
    for name, parameter in model.named_parameters():
        counts[group_of(name)] += parameter.numel()
    return counts
