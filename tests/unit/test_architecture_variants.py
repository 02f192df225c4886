"""The architecture fields of ModelConfig (norm type and placement, FFN activation, positions, interpolation)."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from llama_course.config import PRESETS, ModelConfig, count_parameters
from llama_course.interop import save_hf_checkpoint, save_meta_checkpoint
from llama_course.model import Llama
from llama_course.training.activation_checkpointing import apply_activation_checkpointing

SMALL = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=8, max_seq_len=32)
VARIANTS = [
    {"norm_type": "layernorm"},
    {"norm_placement": "post"},
    {"ffn_activation": "gelu"},
    {"ffn_activation": "relu"},
    {"position_encoding": "learned"},
    {"position_encoding": "none"},
    {"position_interpolation": 2.0},
    {"norm_type": "layernorm", "norm_placement": "post", "ffn_activation": "relu", "position_encoding": "learned"},
]


def build(seed: int = 0, **fields) -> Llama:
    torch.manual_seed(seed)
    return Llama(dataclasses.replace(SMALL, **fields)).double().eval()


@pytest.mark.parametrize("fields", VARIANTS)
def test_count_parameters_equals_built_variant(fields):
    config = dataclasses.replace(PRESETS["tiny"], **fields)
    with torch.device("meta"):
        model = Llama(config)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(config)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_two_matrix_ffn_has_swiglus_weights(activation):
    for config in (PRESETS["tiny"], PRESETS["llama2-7b"]):
        gated = config.hidden_dim
        plain = dataclasses.replace(config, ffn_activation=activation)
        assert 2 * plain.dim * plain.hidden_dim == 3 * config.dim * gated
    assert dataclasses.replace(PRESETS["llama2-7b"], ffn_activation=activation).hidden_dim == 16512  # 1.5 x 11008


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"norm_type": "batchnorm"}, "norm_type='batchnorm' is unknown; choose one of ('rmsnorm', 'layernorm')"),
        ({"norm_placement": "sandwich"}, "norm_placement='sandwich' is unknown"),
        ({"ffn_activation": "swish"}, "ffn_activation='swish' is unknown; choose one of ('swiglu', 'gelu', 'relu')"),
        ({"position_encoding": "alibi"}, "position_encoding='alibi' is unknown"),
        ({"position_interpolation": 0.0}, "position_interpolation=0.0 must be a positive finite number"),
        ({"position_interpolation": 2.0, "position_encoding": "learned"},
         "position_interpolation=2.0 scales rotary positions; position_encoding='learned' has none"),
    ],
)
def test_invalid_variant_names_the_value(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dataclasses.replace(SMALL, **fields)


def test_llama_config_serialises_as_before_and_variants_round_trip():
    assert "norm_type" not in PRESETS["tiny"].to_dict() and PRESETS["tiny"].architecture_variants == {}
    variant = dataclasses.replace(PRESETS["tiny"], norm_placement="post", position_interpolation=2.0)
    assert variant.architecture_variants == {"norm_placement": "post", "position_interpolation": 2.0}
    assert {"norm_placement", "position_interpolation"} <= set(variant.to_dict())
    assert ModelConfig.from_dict(variant.to_dict()) == variant
    assert ModelConfig.from_dict(PRESETS["tiny"].to_dict()) == PRESETS["tiny"]


def test_post_norm_block_is_norm_of_residual_sum():
    model = build(norm_placement="post", norm_type="layernorm")
    block = model.layers[0]
    x = torch.randn(2, 5, SMALL.dim, dtype=torch.float64)
    cos = sin = None
    attended, _ = block.attention(x, cos, sin)
    h = F.layer_norm(x + attended, (SMALL.dim,), block.attention_norm.weight, block.attention_norm.bias, SMALL.norm_eps)
    ff = block.feed_forward
    ffn = ff.w2(F.silu(ff.w1(h)) * ff.w3(h))
    expected = F.layer_norm(h + ffn, (SMALL.dim,), block.ffn_norm.weight, block.ffn_norm.bias, SMALL.norm_eps)
    block.attention.backend = "eager"
    torch.testing.assert_close(block(x, cos, sin)[0], expected, rtol=0, atol=1e-12)
    assert isinstance(model.norm, torch.nn.Identity)


def test_layernorm_centres_and_scales():
    x = torch.randn(3, SMALL.dim, dtype=torch.float64) * 4 + 7
    norm = build(norm_type="layernorm").layers[0].attention_norm
    out = norm(x)
    torch.testing.assert_close(out.mean(-1), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_two_matrix_ffn_formula(activation):
    ffn = build(ffn_activation=activation).layers[0].feed_forward
    x = torch.randn(4, SMALL.dim, dtype=torch.float64)
    act = {"gelu": lambda v: 0.5 * v * (1 + torch.erf(v / math.sqrt(2))), "relu": lambda v: v.clamp(min=0)}[activation]
    torch.testing.assert_close(ffn(x), act(x @ ffn.w1.weight.T) @ ffn.w2.weight.T, rtol=0, atol=1e-12)


def test_position_interpolation_divides_positions():
    tokens = torch.randint(0, SMALL.vocab_size, (2, 8))
    plain = build()
    interpolated = build(position_interpolation=2.0)
    interpolated.load_state_dict(plain.state_dict())
    positions = torch.arange(8).expand(2, 8)
    torch.testing.assert_close(interpolated(tokens, positions=2 * positions).logits,
                               plain(tokens, positions=positions).logits, rtol=0, atol=1e-12)
    assert not torch.allclose(interpolated(tokens).logits, plain(tokens).logits)


def test_learned_positions_add_a_table_row_and_none_ignores_positions():
    tokens = torch.randint(0, SMALL.vocab_size, (2, 8))
    learned, nope = build(position_encoding="learned"), build(position_encoding="none")
    nope.load_state_dict({k: v for k, v in learned.state_dict().items() if k != "pos_embeddings.weight"})
    shifted = torch.arange(3, 11).expand(2, 8)
    torch.testing.assert_close(nope(tokens).logits, nope(tokens, positions=shifted).logits, rtol=0, atol=0)
    assert not torch.allclose(learned(tokens).logits, learned(tokens, positions=shifted).logits)
    learned.pos_embeddings.weight.data.zero_()
    torch.testing.assert_close(learned(tokens).logits, nope(tokens).logits, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"positions \[30, 37\] fall outside the learned position table \[0, 32\)"):
        learned(tokens, positions=torch.arange(30, 38).expand(2, 8))


@pytest.mark.parametrize("fields", VARIANTS)
def test_cached_decoding_equals_full_forward(fields):
    model = build(**fields)
    tokens = torch.randint(0, SMALL.vocab_size, (2, 10))
    full = model(tokens).logits
    cache = model.new_cache(2)
    steps = [model(tokens[:, :6], cache=cache).logits]
    steps += [model(tokens[:, t : t + 1], cache=cache).logits for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("fields", VARIANTS[:-2] + VARIANTS[-1:])
def test_exporters_refuse_a_variant(fields, tmp_path):
    model = build(**fields)
    with pytest.raises(ValueError, match="the Hugging Face format describes Llama's own architecture only"):
        save_hf_checkpoint(model, tmp_path / "hf")
    with pytest.raises(ValueError, match="the Meta format describes Llama's own architecture only"):
        save_meta_checkpoint(model, tmp_path / "meta")
    assert not (tmp_path / "hf").exists() and not (tmp_path / "meta").exists()


def test_position_interpolation_is_refused_by_exporters(tmp_path):
    with pytest.raises(ValueError, match=r"not \{'position_interpolation': 2.0\}"):
        save_hf_checkpoint(build(position_interpolation=2.0), tmp_path / "hf")


def test_hand_written_checkpointing_refuses_a_variant():
    with pytest.raises(ValueError, match="mode='selective' hand-writes the backward of Llama's block"):
        apply_activation_checkpointing(build(norm_placement="post"), "selective")
    apply_activation_checkpointing(build(norm_placement="post"), "full")  # generic modes work
