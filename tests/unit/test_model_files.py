"""Weight files are checked against their config before a model is built: bad configs and files are clear errors."""

import json
import math
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from llama_course.alignment.reward_train import load_reward_model
from llama_course.alignment.sft import export_model
from llama_course.config import ModelConfig
from llama_course.interop import load_hf_checkpoint, save_hf_checkpoint
from llama_course.model import Llama
from llama_course.model_files import CONFIG_FILE, load_model_weights, read_model_folder, write_model_folder
from llama_course.pretrained import load_pretrained_folder

CONFIG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=1024, multiple_of=16, max_seq_len=64)


@pytest.fixture
def folder(tmp_path):
    """An exported model folder (config.json + model.safetensors), as `llama-course chat --checkpoint` reads."""
    torch.manual_seed(0)
    export_model(Llama(CONFIG), tmp_path / "model", {"note": "for the validation tests"})
    return tmp_path / "model"


def edit_config(folder, **changes) -> None:
    card = json.loads((folder / "config.json").read_text())
    card["model_config"] |= changes
    (folder / "config.json").write_text(json.dumps(card))  # json writes NaN as the bare word NaN, as it reads


@pytest.mark.parametrize(("field", "value"), [
    ("norm_eps", math.nan), ("rope_theta", math.nan), ("ffn_dim_multiplier", math.nan), ("rope_theta", math.inf),
    ("norm_eps", "1e-5"), ("dim", "32"), ("n_layers", True),
])
def test_non_finite_or_string_config_fields_are_refused_by_name(folder, field, value):
    edit_config(folder, **{field: value})
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        load_pretrained_folder(folder)


def test_a_config_claiming_a_billion_layers_fails_fast_without_allocating(folder):
    edit_config(folder, n_layers=10**9)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"n_layers=1000000000 but the weights in .* holds the tensors of 2 "):
        load_pretrained_folder(folder)
    assert time.perf_counter() - started < 2.0


def test_a_config_that_disagrees_with_the_tensor_shapes_names_them(folder):
    edit_config(folder, dim=64, n_heads=4)
    with pytest.raises(ValueError, match=r"'tok_embeddings.weight' has shape \(1024, 32\), expected \(1024, 64\)"):
        load_pretrained_folder(folder)


def test_mixed_float32_and_bfloat16_tensors_are_refused(folder):
    weights = load_file(folder / "model.safetensors")
    weights["norm.weight"] = weights["norm.weight"].bfloat16()
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"mixes dtypes \(BF16: \['norm.weight'\], F32: "):
        load_pretrained_folder(folder)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_truncated_or_garbage_safetensors_are_a_clear_error(folder, damage):
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a tensor file" * 100)
    with pytest.raises(ValueError, match="is not a valid safetensors file .*truncated or corrupt"):
        load_pretrained_folder(folder)


def test_garbage_config_json_is_a_clear_error(folder):
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        load_pretrained_folder(folder)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list, expected an object"):
        load_pretrained_folder(folder)


def test_reward_model_folders_are_checked_the_same_way(tmp_path):
    from llama_course.alignment.reward import RewardModel
    from llama_course.alignment.reward_train import save_reward_model

    save_reward_model(RewardModel(Llama(CONFIG), eos_id=2), tmp_path / "rm", {"note": "test"})
    model, _ = load_reward_model(tmp_path / "rm")
    assert model.backbone.output.weight.shape == (1, 32)
    card = json.loads((tmp_path / "rm" / "config.json").read_text())
    card["model_config"]["n_layers"] = 10**9
    (tmp_path / "rm" / "config.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="n_layers=1000000000"):
        load_reward_model(tmp_path / "rm")


def test_hf_config_with_a_billion_layers_or_strings_fails_fast(tmp_path):
    save_hf_checkpoint(Llama(CONFIG), tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    for change, message in (({"num_hidden_layers": 10**9}, "n_layers=1000000000"),
                            ({"hidden_size": "32"}, "hidden_size='32': it must be a positive integer"),
                            ({"rms_norm_eps": math.nan}, "norm_eps=nan")):
        (tmp_path / "hf" / "config.json").write_text(json.dumps(config | change))
        with pytest.raises(ValueError, match=message):
            load_hf_checkpoint(tmp_path / "hf")
    del config["hidden_size"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json lacks \['hidden_size'\]"):
        load_hf_checkpoint(tmp_path / "hf")


def test_load_model_weights_returns_the_stored_tensors(folder):
    weights = load_model_weights(folder / "model.safetensors", CONFIG)
    assert weights.keys() == Llama(CONFIG).state_dict().keys()
    assert all(torch.equal(weights[name], tensor) for name, tensor in load_file(folder / "model.safetensors").items())


def test_a_model_folder_round_trips_with_its_own_fields_in_order(tmp_path):
    config = ModelConfig(dim=32, n_layers=1, n_heads=4, vocab_size=97, max_seq_len=16)
    model = Llama(config).double()
    write_model_folder(model, tmp_path / "m", {"note": "test"}, eos_id=2, head="scalar")
    text = (tmp_path / "m" / CONFIG_FILE).read_text()
    assert list(json.loads(text)) == ["model_config", "tokenizer", "eos_id", "head", "card"]
    assert text == json.dumps({"model_config": config.to_dict(), "tokenizer": "toy", "eos_id": 2, "head": "scalar",
                               "card": {"note": "test"}}, indent=1) + "\n"
    values, read_config, weights = read_model_folder(tmp_path / "m", missing="unused")
    assert values["eos_id"] == 2 and read_config == config
    assert all(weights[name].dtype == torch.float32 and torch.equal(weights[name], tensor.float())
               for name, tensor in model.state_dict().items())
    with pytest.raises(FileNotFoundError, match="^no folder here$"):
        read_model_folder(tmp_path / "nothing", missing="no folder here")
