"""Read and write checkpoint folders: Hugging Face (config.json + safetensors) and Meta (params.json + .pth shards).

Weights are read with safetensors or `torch.load(weights_only=True)` only (`model_files`): a full pickle can run
arbitrary code. A sharded folder's `*.index.json` may only name shard files inside the folder, and a tensor may
live in one shard only. The config's layer count is checked against the weights before any model is built.
`transformers` is never imported here; the folders written are the ones `from_pretrained` reads.
Writes are atomic: the folder is assembled under a temporary name next to its destination, then renamed.
"""

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from llama_course.config import ModelConfig
from llama_course.interop.configs import (
    hf_config_from_model_config,
    meta_params_from_model_config,
    model_config_from_hf,
    model_config_from_meta_params,
)
from llama_course.interop.state_dicts import (
    from_hf_state_dict,
    merge_meta_shards,
    split_meta_shards,
    to_hf_state_dict,
)
from llama_course.model import Llama
from llama_course.model_files import (
    StateDict,
    check_layer_count,
    check_single_dtype,
    check_state_dict,
    expected_shapes,
    load_tensor_file,
    read_json,
    read_safetensors_header,
    shortlist,
)

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


def _load_weight_file(path: Path, *, mmap: bool = False) -> StateDict:
    if path.suffix == ".safetensors":
        read_safetensors_header(path)  # a clear error for a truncated or garbage file
        return load_file(path, device="cpu")
    state_dict = load_tensor_file(path, mmap=mmap)
    if not isinstance(state_dict, dict) or not all(isinstance(t, torch.Tensor) for t in state_dict.values()):
        raise ValueError(f"{path} is not a state dict (a dict of tensors)")
    return state_dict


def _shard_paths(folder: Path, index_path: Path, weight_map: object) -> dict[str, Path]:
    """Tensor name -> shard file of an `*.index.json` weight map; every shard must lie inside `folder`."""
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index_path}'s weight_map must map tensor names to shard file names")
    root = folder.resolve()
    paths = {}
    for name, shard in weight_map.items():
        path = (folder / shard).resolve()
        if Path(shard).is_absolute() or not path.is_relative_to(root):
            raise ValueError(f"{index_path} names the shard {shard!r} for {name!r}, outside the checkpoint folder "
                             f"{folder}: refusing to read it (shards must be files inside the folder)")
        paths[name] = path
    return paths


def read_hf_state_dict(folder: str | os.PathLike) -> StateDict:
    """All tensors of a Hugging Face folder: one file, or the shards that an `*.index.json` weight map lists."""
    folder = Path(folder)
    for name in HF_WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return _load_weight_file(path)
        shard_paths = _shard_paths(folder, path, read_json(path).get("weight_map"))
        state_dict: StateDict = {}
        source: dict[str, Path] = {}
        for shard in sorted(set(shard_paths.values())):
            tensors = _load_weight_file(shard)
            duplicated = sorted(set(tensors) & set(state_dict))
            if duplicated:
                raise ValueError(f"the shards {source[duplicated[0]].name} and {shard.name} of {folder} both hold "
                                 f"{shortlist(duplicated)}: a tensor must live in one shard only")
            state_dict.update(tensors)
            source.update(dict.fromkeys(tensors, shard))
        missing = sorted(set(shard_paths) - set(state_dict))
        if missing:
            raise ValueError(f"{path} lists tensors that its shards do not contain: {shortlist(missing)}")
        return state_dict
    raise FileNotFoundError(f"no weights in {folder}: expected one of {list(HF_WEIGHT_FILES)}")


def _model_from_state_dict(
    config: ModelConfig, state_dict: StateDict, dtype: torch.dtype | None, device: torch.device | str | None
) -> Llama:
    """A Llama whose parameters ARE the given (already checked) tensors, cast to dtype/device if given."""
    with torch.device("meta"):
        model = Llama(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.to(device=device, dtype=dtype)


def load_hf_checkpoint(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    attention_backend: str = "sdpa",
) -> Llama:
    """A `Llama` from a Hugging Face `LlamaForCausalLM` folder (config.json + safetensors or pytorch_model*.bin).

    dtype: None keeps the dtype the weights are stored in. Raises a ValueError naming any missing, unexpected
    or wrongly shaped tensor.
    """
    folder = Path(path)
    config = model_config_from_hf(read_json(folder / "config.json"), attention_backend=attention_backend)
    hf_state_dict = read_hf_state_dict(folder)
    _check_weights(hf_state_dict, config, f"the Hugging Face checkpoint in {folder}")
    state_dict = from_hf_state_dict(hf_state_dict, config)
    return _model_from_state_dict(config, state_dict, dtype, device)


def _check_weights(state_dict: StateDict, config: ModelConfig, source: str) -> None:
    """Cheap checks before any model is built from `config`: the layer count and a single dtype."""
    check_layer_count(state_dict, config, source)
    check_single_dtype({name: tensor.dtype for name, tensor in state_dict.items()}, source)


@contextlib.contextmanager
def _atomic_folder(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; once the block succeeds, it becomes `path` in one rename."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        if not path.exists():
            staging.rename(path)
            return
        retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        path.rename(retired / path.name)
        try:
            staging.rename(path)
        except OSError:
            (retired / path.name).rename(path)  # put the old checkpoint back
            raise
        finally:
            shutil.rmtree(retired)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def save_hf_checkpoint(model: Llama, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `model` as a Hugging Face folder (config.json + model.safetensors) that
    `transformers.AutoModelForCausalLM.from_pretrained(path)` loads. Returns the folder."""
    path = Path(path)
    hf_config = hf_config_from_model_config(model.config, model.output.weight.dtype)  # refuses a variant first
    weights = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    hf_weights = to_hf_state_dict(weights, model.config)
    with _atomic_folder(path, overwrite) as staging:
        (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        save_file(hf_weights, staging / "model.safetensors", metadata={"format": "pt"})
    return path


def _meta_shard_paths(folder: Path) -> list[Path]:
    paths = sorted(folder.glob("consolidated.*.pth"))
    if not paths:
        raise FileNotFoundError(f"no consolidated.*.pth in {folder}; is it a Meta checkpoint folder?")
    indices = [int(match.group(1)) if (match := re.fullmatch(r"consolidated\.(\d+)\.pth", p.name)) else -1
               for p in paths]
    if indices != list(range(len(paths))):
        raise ValueError(f"Meta shards must be consolidated.00.pth ... consolidated.{len(paths) - 1:02d}.pth; "
                         f"found {[p.name for p in paths]}")
    return paths


def load_meta_checkpoint(
    folder: str | os.PathLike,
    *,
    vocab_size: int | None = None,
    max_seq_len: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    attention_backend: str = "sdpa",
) -> Llama:
    """A `Llama` from Meta's release layout: params.json + consolidated.00.pth (+ .01, ... merged).

    Meta's params.json says `vocab_size: -1`; it is then read from the embedding's shape unless given.
    `max_seq_len` is not in Meta's file: pass 2048 (Llama 1) or 4096 (Llama 2); the default is ModelConfig's.
    """
    folder = Path(folder)
    params = read_json(folder / "params.json")
    # mmap: a 13 GB shard is paged in as tensors are used instead of being read into memory first.
    shards = [_load_weight_file(path, mmap=True) for path in _meta_shard_paths(folder)]
    state_dict = merge_meta_shards(shards)
    if vocab_size is None and params.get("vocab_size", -1) == -1 and "tok_embeddings.weight" in state_dict:
        vocab_size = state_dict["tok_embeddings.weight"].shape[0]
    config = model_config_from_meta_params(params, vocab_size=vocab_size, max_seq_len=max_seq_len,
                                           attention_backend=attention_backend)
    _check_weights(state_dict, config, f"the Meta checkpoint in {folder}")
    check_state_dict(state_dict, expected_shapes(config), f"the Meta checkpoint in {folder}")
    return _model_from_state_dict(config, state_dict, dtype, device)


def save_meta_checkpoint(
    model: Llama, folder: str | os.PathLike, *, num_shards: int = 1, overwrite: bool = False
) -> Path:
    """Write `model` in Meta's layout: params.json + `num_shards` model-parallel consolidated.NN.pth files."""
    folder = Path(folder)
    params = meta_params_from_model_config(model.config)  # refuses a variant first
    weights = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    shards = split_meta_shards(weights, num_shards)
    with _atomic_folder(folder, overwrite) as staging:
        (staging / "params.json").write_text(json.dumps(params, indent=2))
        for index, shard in enumerate(shards):
            torch.save(shard, staging / f"consolidated.{index:02d}.pth")
    return folder
