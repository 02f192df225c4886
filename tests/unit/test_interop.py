"""Checkpoint interop without transformers: config translation, name mapping, Meta shards, strict loading."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from llama_course.config import PRESETS, ModelConfig
from llama_course.interop import checkpoints as checkpoints_module
from llama_course.interop import (
    ffn_rule_for_hidden_dim,
    from_hf_state_dict,
    hf_config_from_model_config,
    load_hf_checkpoint,
    load_meta_checkpoint,
    meta_params_from_model_config,
    model_config_from_hf,
    model_config_from_meta_params,
    save_hf_checkpoint,
    save_meta_checkpoint,
    to_hf_state_dict,
)
from llama_course.layers.swiglu import ffn_hidden_dim
from llama_course.model import Llama

CONFIG = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, multiple_of=16, max_seq_len=64)


def _model(config: ModelConfig = CONFIG, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    model = Llama(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


# --- FFN width <-> rule --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("dim", "hidden", "rule"), [
    (8192, 28672, (4096, 1.3)),  # Llama 2 70B: Meta's own params.json values come back
    (2048, 5632, (512, None)),  # TinyLlama
    (4096, 14336, (2048, 1.3)),  # Llama 3 8B's width
    (64, 160, (32, 0.9)),  # narrower than 8d/3: only a multiplier < 1 reaches it
])
def test_ffn_rule_for_hidden_dim_recovers_a_rule_that_reproduces_the_width(dim, hidden, rule):
    assert ffn_rule_for_hidden_dim(dim, hidden) == rule
    assert ffn_hidden_dim(dim, *rule) == hidden


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_width_is_expressible(name):
    config = PRESETS[name]
    assert ffn_hidden_dim(config.dim, *ffn_rule_for_hidden_dim(config.dim, config.hidden_dim)) == config.hidden_dim


def test_ffn_rule_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="hidden_dim=0"):
        ffn_rule_for_hidden_dim(64, 0)


# --- configs ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_hf_and_meta_configs_round_trip_every_preset(name):
    config = PRESETS[name]
    assert model_config_from_hf(hf_config_from_model_config(config), attention_backend=config.attention_backend) \
        == config
    assert model_config_from_meta_params(meta_params_from_model_config(config),
                                         attention_backend=config.attention_backend) == config


def test_hf_config_written_by_transformers_maps_field_by_field():
    hf = {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
          "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000, "rms_norm_eps": 1e-5,
          "max_position_embeddings": 4096, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
          "tie_word_embeddings": False, "hidden_act": "silu", "head_dim": 128}
    assert model_config_from_hf(hf) == PRESETS["llama2-70b"]
    old_style = {**hf, "rope_theta": 500000.0}
    del old_style["rope_parameters"]
    assert model_config_from_hf(old_style).rope_theta == 500000.0


def test_meta_params_json_of_llama2_70b_gives_the_preset():
    params = {"dim": 8192, "multiple_of": 4096, "ffn_dim_multiplier": 1.3, "n_heads": 64, "n_kv_heads": 8,
              "n_layers": 80, "norm_eps": 1e-05, "vocab_size": -1}
    assert model_config_from_meta_params(params, vocab_size=32000, max_seq_len=4096) == PRESETS["llama2-70b"]
    with pytest.raises(ValueError, match="vocab_size=-1"):
        model_config_from_meta_params(params)
    with pytest.raises(ValueError, match="use_scaled_rope"):
        model_config_from_meta_params({**params, "use_scaled_rope": True}, vocab_size=32000)


@pytest.mark.parametrize(("change", "message"), [
    ({"tie_word_embeddings": True}, "tie_word_embeddings=True"),
    ({"model_type": "mistral"}, "model_type='mistral'"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "RoPE scaling"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "RoPE scaling"),
    ({"attention_bias": True}, "attention_bias=True"),
    ({"head_dim": 32}, "head_dim=32"),
    ({"multiple_of": 256}, "delete those two keys"),
])
def test_unsupported_hf_configs_are_rejected_by_name(change, message):
    hf = {**hf_config_from_model_config(CONFIG), **change}
    with pytest.raises(ValueError, match=message):
        model_config_from_hf(hf)


# --- state dicts --------------------------------------------------------------------------------------------

def test_hf_state_dict_round_trip_is_exact_and_permutes_only_wq_wk():
    model = _model()
    ours = model.state_dict()
    hf = to_hf_state_dict(ours, CONFIG)
    assert len(hf) == len(ours) == 3 + 9 * CONFIG.n_layers
    assert torch.equal(hf["model.layers.1.mlp.gate_proj.weight"], ours["layers.1.feed_forward.w1.weight"])
    assert torch.equal(hf["model.layers.1.mlp.down_proj.weight"], ours["layers.1.feed_forward.w2.weight"])
    assert torch.equal(hf["model.layers.0.post_attention_layernorm.weight"], ours["layers.0.ffn_norm.weight"])
    # Within a head, HF's row r < hd/2 is Meta's row 2r (the first of a rotated pair), row hd/2 + r is 2r + 1.
    hd = CONFIG.head_dim
    wk_meta, wk_hf = ours["layers.0.attention.wk.weight"], hf["model.layers.0.self_attn.k_proj.weight"]
    for head in range(CONFIG.n_kv_heads):
        for r in range(hd // 2):
            assert torch.equal(wk_hf[head * hd + r], wk_meta[head * hd + 2 * r])
            assert torch.equal(wk_hf[head * hd + hd // 2 + r], wk_meta[head * hd + 2 * r + 1])
    back = from_hf_state_dict(hf, CONFIG)
    assert all(torch.equal(back[name], ours[name]) for name in ours)


def test_hf_state_dict_ignores_stored_rotary_frequencies():
    hf = to_hf_state_dict(_model().state_dict(), CONFIG)
    hf["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(CONFIG.head_dim // 2)
    assert len(from_hf_state_dict(hf, CONFIG)) == len(hf) - 1


# --- Meta checkpoints ---------------------------------------------------------------------------------------

# How Meta's model-parallel code splits each tensor, written out independently of the package's table.
_SPLIT_DIM = {"tok_embeddings": 1, "output": 0, "wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "wo": 1, "w2": 1}


def _split_by_hand(state_dict, n):
    shards = [{} for _ in range(n)]
    for name, tensor in state_dict.items():
        kind = name.split(".")[-2]
        pieces = tensor.chunk(n, dim=_SPLIT_DIM[kind]) if kind in _SPLIT_DIM else [tensor] * n
        for shard, piece in zip(shards, pieces, strict=True):
            shard[name] = piece.clone()
    return shards


def test_meta_two_shard_checkpoint_merges_back_to_the_model(tmp_path):
    model = _model()
    shards = _split_by_hand(model.state_dict(), 2)
    assert shards[0]["layers.0.attention.wk.weight"].shape == (CONFIG.head_dim, CONFIG.dim)  # one KV head each
    for index, shard in enumerate(shards):
        shard["rope.freqs"] = torch.ones(CONFIG.head_dim // 2)  # Llama 1 files carry this buffer
        torch.save(shard, tmp_path / f"consolidated.{index:02d}.pth")
    params = {key: value for key, value in meta_params_from_model_config(CONFIG).items() if key != "max_seq_len"}
    (tmp_path / "params.json").write_text(json.dumps({**params, "vocab_size": -1}))
    loaded = load_meta_checkpoint(tmp_path, max_seq_len=CONFIG.max_seq_len)
    assert loaded.config == CONFIG
    _assert_same_weights(loaded, model)


def test_save_meta_checkpoint_shards_as_meta_does_and_round_trips(tmp_path):
    model = _model()
    save_meta_checkpoint(model, tmp_path / "meta", num_shards=2)
    expected = _split_by_hand(model.state_dict(), 2)
    for index in range(2):
        written = torch.load(tmp_path / "meta" / f"consolidated.{index:02d}.pth", weights_only=True)
        assert written.keys() == expected[index].keys()
        assert all(torch.equal(written[name], expected[index][name]) for name in written)
    _assert_same_weights(load_meta_checkpoint(tmp_path / "meta"), model)


def test_meta_shards_with_different_replicated_norms_are_rejected(tmp_path):
    shards = _split_by_hand(_model().state_dict(), 2)
    shards[1]["norm.weight"] = shards[1]["norm.weight"] + 1
    for index, shard in enumerate(shards):
        torch.save(shard, tmp_path / f"consolidated.{index:02d}.pth")
    (tmp_path / "params.json").write_text(json.dumps(meta_params_from_model_config(CONFIG)))
    with pytest.raises(ValueError, match="'norm.weight' differs between shard 0 and shard 1"):
        load_meta_checkpoint(tmp_path)


def test_meta_shard_numbering_gap_is_rejected(tmp_path):
    save_meta_checkpoint(_model(), tmp_path / "meta", num_shards=2)
    (tmp_path / "meta" / "consolidated.01.pth").rename(tmp_path / "meta" / "consolidated.02.pth")
    with pytest.raises(ValueError, match="consolidated.02.pth"):
        load_meta_checkpoint(tmp_path / "meta")


# --- Hugging Face folders -----------------------------------------------------------------------------------

@torch.no_grad()
def test_hf_folder_round_trip_keeps_weights_config_and_logits(tmp_path):
    model = _model().eval()
    save_hf_checkpoint(model, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["intermediate_size"] == CONFIG.hidden_dim
    loaded = load_hf_checkpoint(tmp_path / "hf").eval()
    assert loaded.config == CONFIG
    _assert_same_weights(loaded, model)
    tokens = torch.randint(0, CONFIG.vocab_size, (2, 9))
    assert torch.equal(loaded(tokens).logits, model(tokens).logits)


def test_hf_sharded_index_and_pytorch_bin_folders_load(tmp_path):
    model = _model()
    save_hf_checkpoint(model, tmp_path / "single")
    hf = load_file(tmp_path / "single" / "model.safetensors")
    config_text = (tmp_path / "single" / "config.json").read_text()
    names = sorted(hf)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(config_text)
    weight_map = {}
    for index, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        file = f"model-{index + 1:05d}-of-00002.safetensors"
        save_file({name: hf[name] for name in part}, sharded / file)
        weight_map.update(dict.fromkeys(part, file))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _assert_same_weights(load_hf_checkpoint(sharded), model)
    pickled = tmp_path / "bin"
    pickled.mkdir()
    (pickled / "config.json").write_text(config_text)
    torch.save(hf, pickled / "pytorch_model.bin")
    _assert_same_weights(load_hf_checkpoint(pickled), model)


class _Payload:
    """An arbitrary object: unpickling it would mean running code from the file."""


def test_pytorch_bin_with_arbitrary_pickled_objects_is_refused(tmp_path):
    save_hf_checkpoint(_model(), tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save({"model.norm.weight": _Payload()}, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="holds more than tensors"):
        load_hf_checkpoint(tmp_path / "hf")


def test_load_casts_to_dtype_or_keeps_the_stored_one(tmp_path):
    save_hf_checkpoint(_model().to(torch.bfloat16), tmp_path / "bf16")
    assert {p.dtype for p in load_hf_checkpoint(tmp_path / "bf16").parameters()} == {torch.bfloat16}
    loaded = load_hf_checkpoint(tmp_path / "bf16", dtype=torch.float32)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}


def _rewrite_weights(folder, edit):
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda w: w.pop("model.layers.1.mlp.up_proj.weight"), r"missing tensors \['model.layers.1.mlp.up_proj.weight'\]"),
    (lambda w: w.update({"model.layers.2.mlp.up_proj.weight": torch.zeros(1)}),
     r"unexpected tensors \['model.layers.2.mlp.up_proj.weight'\]"),
    (lambda w: w.update({"lm_head.weight": torch.zeros(95, 64)}),
     r"'lm_head.weight' has shape \(95, 64\), expected \(96, 64\)"),
])
def test_bad_hf_checkpoints_name_the_offending_tensor(tmp_path, edit, message):
    save_hf_checkpoint(_model(), tmp_path / "hf")
    _rewrite_weights(tmp_path / "hf", edit)
    with pytest.raises(ValueError, match=message):
        load_hf_checkpoint(tmp_path / "hf")


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_config_from_model_config(CONFIG)))
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "params.json").write_text(json.dumps(meta_params_from_model_config(CONFIG)))
    with pytest.raises(FileNotFoundError, match=r"consolidated\.\*\.pth"):
        load_meta_checkpoint(tmp_path)


def test_save_is_atomic_and_refuses_to_overwrite_by_default(tmp_path, monkeypatch):
    target = tmp_path / "hf"
    save_hf_checkpoint(_model(seed=0), target)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_hf_checkpoint(_model(seed=1), target)

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints_module, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_hf_checkpoint(_model(seed=1), target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no staging folder left behind
    _assert_same_weights(load_hf_checkpoint(target), _model(seed=0))  # the old checkpoint is intact
    monkeypatch.undo()
    save_hf_checkpoint(_model(seed=1), target, overwrite=True)
    _assert_same_weights(load_hf_checkpoint(target), _model(seed=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
