"""Interoperability with Hugging Face transformers and Meta's released checkpoints (the course's chapter 7).

- `configs`: ModelConfig <-> HF config.json / Meta params.json;
- `state_dicts`: tensor names, the RoPE row permutation, Meta's model-parallel shards;
- `checkpoints`: reading and writing whole checkpoint folders.

`transformers` is an optional extra and is never imported by this package.
"""

from llama_course.interop.checkpoints import (
    load_hf_checkpoint,
    load_meta_checkpoint,
    read_hf_state_dict,
    save_hf_checkpoint,
    save_meta_checkpoint,
)
from llama_course.interop.configs import (
    ffn_rule_for_hidden_dim,
    hf_config_from_model_config,
    meta_params_from_model_config,
    model_config_from_hf,
    model_config_from_meta_params,
)
from llama_course.interop.state_dicts import (
    check_state_dict,
    expected_shapes,
    from_hf_state_dict,
    merge_meta_shards,
    split_meta_shards,
    to_hf_state_dict,
)

__all__ = [
    "check_state_dict",
    "expected_shapes",
    "ffn_rule_for_hidden_dim",
    "from_hf_state_dict",
    "hf_config_from_model_config",
    "load_hf_checkpoint",
    "load_meta_checkpoint",
    "merge_meta_shards",
    "meta_params_from_model_config",
    "model_config_from_hf",
    "model_config_from_meta_params",
    "read_hf_state_dict",
    "save_hf_checkpoint",
    "save_meta_checkpoint",
    "split_meta_shards",
    "to_hf_state_dict",
]
