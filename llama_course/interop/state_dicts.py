"""State-dict conversion between llama_course (Meta's names), Hugging Face `LlamaForCausalLM` and Meta's shards.

`llama_course` keeps Meta's parameter names, so a single-file `consolidated.00.pth` IS our state dict. Hugging
Face renames every tensor and, because its RoPE rotates halves instead of adjacent pairs (`layers/rope.py`),
permutes the output rows of wq and wk; the permutation of wk counts KV heads, not query heads (GQA).

Meta's larger checkpoints are tensor-parallel shards (`consolidated.00.pth`, `consolidated.01.pth`, ...), one
per GPU of Megatron-style model parallelism: column-parallel layers (wq, wk, wv, w1, w3, output) are split
along their output rows (dim 0), row-parallel ones (wo, w2) along their input columns (dim 1), the token
embedding along the embedding width (dim 1), and the RMSNorm gains are copied into every shard.
"""

import re

import torch

from llama_course.config import ModelConfig
from llama_course.layers.rope import permute_hf_to_meta, permute_meta_to_hf
from llama_course.model_files import StateDict, check_state_dict, expected_shapes, shortlist

# (llama_course / Meta name, Hugging Face name); "{i}" is the layer index.
_NAME_PAIRS = (
    ("tok_embeddings.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
    ("layers.{i}.attention_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.attention.wq.weight", "model.layers.{i}.self_attn.q_proj.weight"),
    ("layers.{i}.attention.wk.weight", "model.layers.{i}.self_attn.k_proj.weight"),
    ("layers.{i}.attention.wv.weight", "model.layers.{i}.self_attn.v_proj.weight"),
    ("layers.{i}.attention.wo.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    ("layers.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("layers.{i}.feed_forward.w1.weight", "model.layers.{i}.mlp.gate_proj.weight"),
    ("layers.{i}.feed_forward.w3.weight", "model.layers.{i}.mlp.up_proj.weight"),
    ("layers.{i}.feed_forward.w2.weight", "model.layers.{i}.mlp.down_proj.weight"),
)

# Buffers some checkpoints carry that are recomputed from the config, never learned: Meta's Llama 1 `rope.freqs`,
# older transformers' `rotary_emb.inv_freq`.
_DERIVED_BUFFERS = re.compile(r"(^|\.)(rope\.freqs|rotary_emb\.inv_freq)$")

# Dimension along which Meta's model-parallel shards split each tensor; None: replicated in every shard.
_META_SHARD_DIM = {
    "tok_embeddings.weight": 1,
    "output.weight": 0,
    "norm.weight": None,
    "attention.wq.weight": 0,
    "attention.wk.weight": 0,
    "attention.wv.weight": 0,
    "attention.wo.weight": 1,
    "feed_forward.w1.weight": 0,
    "feed_forward.w3.weight": 0,
    "feed_forward.w2.weight": 1,
    "attention_norm.weight": None,
    "ffn_norm.weight": None,
}


def drop_derived_buffers(state_dict: StateDict) -> StateDict:
    """The state dict without the RoPE frequency buffers that some checkpoints store."""
    return {name: tensor for name, tensor in state_dict.items() if not _DERIVED_BUFFERS.search(name)}


def _name_map(n_layers: int) -> dict[str, str]:
    """llama_course name -> Hugging Face name, for every tensor of an n_layers model."""
    names = {}
    for ours, theirs in _NAME_PAIRS:
        layer_range = range(n_layers) if "{i}" in ours else [None]
        for i in layer_range:
            names[ours.format(i=i)] = theirs.format(i=i)
    return names


def to_hf_state_dict(state_dict: StateDict, config: ModelConfig) -> StateDict:
    """Convert a llama_course (= Meta) state dict into `LlamaForCausalLM`'s names and RoPE row order."""
    check_state_dict(state_dict, expected_shapes(config), "the llama_course state dict")
    converted = {}
    for ours, theirs in _name_map(config.n_layers).items():
        tensor = state_dict[ours]
        if ours.endswith("attention.wq.weight"):
            tensor = permute_meta_to_hf(tensor, config.n_heads)
        elif ours.endswith("attention.wk.weight"):
            tensor = permute_meta_to_hf(tensor, config.n_kv_heads)
        converted[theirs] = tensor.contiguous()
    return converted


def from_hf_state_dict(state_dict: StateDict, config: ModelConfig) -> StateDict:
    """Convert a `LlamaForCausalLM` state dict into llama_course's (= Meta's) names and RoPE row order."""
    state_dict = drop_derived_buffers(state_dict)
    names = _name_map(config.n_layers)
    shapes = expected_shapes(config)
    check_state_dict(state_dict, {theirs: shapes[ours] for ours, theirs in names.items()},
                     "the Hugging Face state dict")
    converted = {}
    for ours, theirs in names.items():
        tensor = state_dict[theirs]
        if ours.endswith("attention.wq.weight"):
            tensor = permute_hf_to_meta(tensor, config.n_heads)
        elif ours.endswith("attention.wk.weight"):
            tensor = permute_hf_to_meta(tensor, config.n_kv_heads)
        converted[ours] = tensor.contiguous()
    return converted


def _meta_shard_dim(name: str) -> int | None:
    suffix = re.sub(r"^layers\.\d+\.", "", name)
    if suffix not in _META_SHARD_DIM:
        raise ValueError(f"tensor {name!r} is not part of a Meta Llama checkpoint; cannot tell how it is sharded")
    return _META_SHARD_DIM[suffix]


def merge_meta_shards(shards: list[StateDict]) -> StateDict:
    """Join Meta's model-parallel shards (consolidated.00.pth, .01, ...) into one state dict (module docstring)."""
    if not shards:
        raise ValueError("no shards given; a Meta checkpoint has at least consolidated.00.pth")
    shards = [drop_derived_buffers(shard) for shard in shards]
    for index, shard in enumerate(shards[1:], start=1):
        if shard.keys() != shards[0].keys():
            differing = sorted(set(shard) ^ set(shards[0]))
            raise ValueError(f"shard {index} holds different tensors than shard 0: {shortlist(differing)}")
    merged = {}
    for name, first in shards[0].items():
        dim = _meta_shard_dim(name)
        if dim is None:
            for index, shard in enumerate(shards[1:], start=1):
                if not torch.equal(shard[name], first):
                    raise ValueError(f"replicated tensor {name!r} differs between shard 0 and shard {index}")
            merged[name] = first
        else:
            merged[name] = torch.cat([shard[name] for shard in shards], dim=dim)
    return merged


def split_meta_shards(state_dict: StateDict, num_shards: int) -> list[StateDict]:
    """Split a state dict into Meta's `num_shards` model-parallel shards; the inverse of `merge_meta_shards`."""
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be >= 1")
    shards: list[StateDict] = [{} for _ in range(num_shards)]
    for name, tensor in state_dict.items():
        dim = _meta_shard_dim(name)
        if dim is None:
            pieces = [tensor] * num_shards
        else:
            if tensor.shape[dim] % num_shards:
                raise ValueError(f"tensor {name!r} of shape {tuple(tensor.shape)} cannot be split into "
                                 f"num_shards={num_shards} equal parts along dim {dim}")
            pieces = tensor.chunk(num_shards, dim=dim)
        for shard, piece in zip(shards, pieces, strict=True):
            shard[name] = piece.clone()
    return shards
