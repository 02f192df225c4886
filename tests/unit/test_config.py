import dataclasses

import pytest
import torch

from llama_course.config import PRESETS, ModelConfig, count_parameters
from llama_course.model import Llama

# PAPER_FACTS.md: (dim, layers, heads, kv heads, ffn hidden, parameters with untied V=32000 embeddings)
PAPER_TABLE = {
    "llama1-7b": (4096, 32, 32, 32, 11008, 6_738_415_616),
    "llama1-13b": (5120, 40, 40, 40, 13824, 13_015_864_320),
    "llama1-33b": (6656, 60, 52, 52, 17920, 32_528_943_616),
    "llama1-65b": (8192, 80, 64, 64, 22016, 65_285_660_672),
    "llama2-7b": (4096, 32, 32, 32, 11008, 6_738_415_616),
    "llama2-13b": (5120, 40, 40, 40, 13824, 13_015_864_320),
    "llama2-70b": (8192, 80, 64, 8, 28672, 68_976_648_192),
}


@pytest.mark.parametrize("name", sorted(PAPER_TABLE))
def test_preset_matches_paper_table(name):
    config = PRESETS[name]
    dim, layers, heads, kv_heads, hidden, params = PAPER_TABLE[name]
    assert (config.dim, config.n_layers, config.n_heads, config.n_kv_heads, config.hidden_dim) == (
        dim, layers, heads, kv_heads, hidden)
    assert count_parameters(config) == params


def test_context_and_eps_per_generation():
    for name, config in PRESETS.items():
        if name.startswith("llama1"):
            assert (config.max_seq_len, config.norm_eps) == (2048, 1e-6)
        elif name.startswith("llama2"):
            assert (config.max_seq_len, config.norm_eps) == (4096, 1e-5)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_count_parameters_equals_built_model(name):
    with torch.device("meta"):
        model = Llama(PRESETS[name])
    assert sum(p.numel() for p in model.parameters()) == count_parameters(PRESETS[name])
    embedding = model.tok_embeddings.weight.numel()
    assert count_parameters(PRESETS[name], include_embedding=False) == count_parameters(PRESETS[name]) - embedding


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 64, "n_layers": 2, "n_heads": 12}, "dim=64 is not divisible by n_heads=12"),
        ({"dim": 96, "n_layers": 2, "n_heads": 12, "n_kv_heads": 5}, "n_heads=12 is not divisible by n_kv_heads=5"),
        ({"dim": 36, "n_layers": 2, "n_heads": 12}, "head_dim=3"),
        ({"dim": 64, "n_layers": 0, "n_heads": 4}, "n_layers=0"),
        ({"dim": 64, "n_layers": 2, "n_heads": 4, "norm_eps": 0.0}, "norm_eps=0.0"),
        ({"dim": 64, "n_layers": 2, "n_heads": 4, "attention_backend": "flash"}, "attention_backend='flash'"),
        ({"dim": 64.0, "n_layers": 2, "n_heads": 4}, "dim=64.0"),
    ],
)
def test_invalid_config_names_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ModelConfig(**kwargs)


def test_config_round_trips_through_dict():
    config = PRESETS["llama2-70b"]
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown ModelConfig fields \\['hidden'\\]"):
        ModelConfig.from_dict({**config.to_dict(), "hidden": 3})
    assert dataclasses.replace(config, n_kv_heads=1).n_kv_heads == 1
