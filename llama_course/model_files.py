"""Reading weight files without trusting them: nothing a user may download can run code or exhaust memory.

- safetensors files hold raw tensors only; their header (names, shapes, dtypes) is read and checked against
  the model config BEFORE the model is built, so a config.json claiming 10^9 layers fails at once instead of
  allocating gigabytes, and a truncated or garbage file is a clear error;
- `.pt` / `.pth` / `.bin` files are pickles, which can run any code when loaded: they are read with
  `torch.load(weights_only=True)` only, which accepts tensors and plain containers and refuses anything else.

It also owns the model folder, the one on-disk format of every model the course ships or exports (base, SFT,
reward, policies): `model.safetensors` (float32) and `config.json` = {"model_config", "tokenizer", the model's own
fields (a reward model's head, EOS id, standardisation), "card"}. `write_model_folder` / `write_model_config`
write it and `read_model_folder` reads it.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from llama_course.config import ModelConfig
from llama_course.model import Llama

StateDict = dict[str, torch.Tensor]
Shapes = Mapping[str, tuple[int, ...]]
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter of `Llama(config)` (built on the meta device: no memory).

    Call `check_layer_count` first when the config comes from a file: building a model of 10^9 layers, even
    on the meta device, takes as long as it sounds.
    """
    with torch.device("meta"):
        model = Llama(config)
    return {name: tuple(param.shape) for name, param in model.state_dict().items()}


def shortlist(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > limit else ''}]"


def check_shapes(found: Shapes, expected: Shapes, source: str) -> None:
    """Raise a ValueError naming every missing, unexpected or wrongly shaped tensor of `found` (name -> shape)."""
    problems = []
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    if missing:
        problems.append(f"missing tensors {shortlist(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {shortlist(unexpected)}")
    for name, shape in expected.items():
        if name in found and tuple(found[name]) != tuple(shape):
            problems.append(f"tensor {name!r} has shape {tuple(found[name])}, expected {tuple(shape)}")
    if problems:
        raise ValueError(f"{source} does not match the model config: " + "; ".join(problems))


def check_state_dict(state_dict: StateDict, expected: Shapes, source: str) -> None:
    """`check_shapes` for a dict of tensors."""
    check_shapes({name: tuple(tensor.shape) for name, tensor in state_dict.items()}, expected, source)


def check_layer_count(names: Iterable[str], config: ModelConfig, source: str) -> None:
    """Every layer the config claims must have tensors (`layers.N.` in any naming): checked before the model
    is built, since building the 10^9 layers a corrupt config may claim would never end. Extra layers are left
    for `check_shapes` to name."""
    layers = {int(match.group(1)) for name in names if (match := _LAYER_INDEX.search(name))}
    if sum(index < config.n_layers for index in layers) < config.n_layers:
        found = f"{len(layers)} ({min(layers)} ... {max(layers)})" if layers else "0"
        raise ValueError(f"the config says n_layers={config.n_layers} but {source} holds the tensors of {found} "
                         "layers: the config does not belong to these weights")


def check_single_dtype(dtypes: Mapping[str, Any], source: str) -> None:
    """All tensors of a checkpoint must share one dtype (a mix of float32 and bfloat16 is a corrupt export)."""
    by_dtype: dict[str, list[str]] = {}
    for name, dtype in dtypes.items():
        by_dtype.setdefault(str(dtype).removeprefix("torch."), []).append(name)
    if len(by_dtype) > 1:
        kinds = ", ".join(f"{dtype}: {shortlist(names, 3)}" for dtype, names in sorted(by_dtype.items()))
        raise ValueError(f"{source} mixes dtypes ({kinds}); re-export it with a single dtype")


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from a file (a config or a card), with a clear error when it is missing or not an object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; is {path.parent} a checkpoint folder?")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); download or write it again") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} holds a JSON {type(values).__name__}, expected an object of settings")
    return values


def read_safetensors_header(path: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of every tensor of a safetensors file, read from its header alone."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {str(path)!r}")
    try:
        with safe_open(path, framework="pt") as handle:
            return {name: (tuple(handle.get_slice(name).get_shape()), handle.get_slice(name).get_dtype())
                    for name in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except SafetensorError as error:
        raise ValueError(f"{str(path)!r} is not a valid safetensors file ({error}): it is truncated or corrupt; "
                         "download or export it again") from None


def load_model_weights(path: str | Path, config: ModelConfig, *, output_rows: int | None = None) -> StateDict:
    """The tensors of `path` (safetensors) for `Llama(config)`, checked against the config before reading them.

    Checks, in order: a readable header, the layer count, every name and shape, a single dtype; then loads.
    `output_rows`: rows of `output.weight` when the head is not the vocabulary (a reward model's: 1).
    """
    header = read_safetensors_header(path)
    source = f"the weights in {str(path)!r}"
    check_layer_count(header, config, source)
    expected = expected_shapes(config)
    if output_rows is not None:
        expected["output.weight"] = (output_rows, config.dim)
    check_shapes({name: shape for name, (shape, _) in header.items()}, expected, source)
    check_single_dtype({name: dtype for name, (_, dtype) in header.items()}, source)
    return load_file(path)


def load_tensor_file(path: str | Path, *, mmap: bool = False) -> Any:
    """`torch.load` of a `.pt` / `.pth` / `.bin` file that may hold only tensors and plain containers.

    A file that pickles any other object (which could run code while loading) is refused with a ValueError;
    so is a file that is not a torch file at all.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        found = re.search(r"(Unsupported global|Trying to load)[^\n]*", str(error))
        reason = found.group(0).rstrip(".") if found else "it pickles objects other than tensors"
        raise ValueError(f"refusing to load {str(path)!r}: it holds more than tensors ({reason}), and loading "
                         "such a pickle could run code from the file. Use weights from a source you trust, "
                         "or convert them to safetensors where they were made") from None
    except (RuntimeError, EOFError) as error:
        raise ValueError(f"{str(path)!r} is not a readable torch file ({error}): it is truncated or corrupt"
                         ) from None


def write_model_config(folder: str | Path, model_config: dict[str, Any], card: dict[str, Any], *,
                       tokenizer: str = "toy", **fields: Any) -> None:
    """A model folder's `config.json`: the model config, the tokenizer ("toy" or a file in the folder), the
    model's own `fields`, and the `card` (how it was made, what it measured)."""
    values = {"model_config": model_config, "tokenizer": tokenizer, **fields, "card": card}
    (Path(folder) / CONFIG_FILE).write_text(json.dumps(values, indent=1) + "\n")


def write_model_folder(model: Llama, folder: str | Path, card: dict[str, Any], *, tokenizer: str = "toy",
                       **fields: Any) -> None:
    """Write `model` (float32) and its `config.json` (`write_model_config`) into `folder`, created if needed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().float().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, folder / WEIGHTS_FILE)
    write_model_config(folder, model.config.to_dict(), card, tokenizer=tokenizer, **fields)


def read_model_folder(folder: str | Path, *, missing: str,
                      output_rows: Callable[[dict[str, Any], ModelConfig], int | None] = lambda values, config: None,
                      ) -> tuple[dict[str, Any], ModelConfig, StateDict]:
    """A model folder's `config.json` values, its `ModelConfig` and its weights, checked against the config before
    they are read (`load_model_weights`; `output_rows(values, config)` checks the model's own fields and gives the
    head's rows when it is not the vocabulary).

    `missing` is the error when the folder lacks a file: it says where such a folder comes from.
    """
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(missing)
    values = read_json(folder / CONFIG_FILE)
    for key in ("model_config", "tokenizer"):
        if key not in values:
            raise ValueError(f"{folder / CONFIG_FILE} lacks {key!r}: write the folder with an export command")
    config = ModelConfig.from_dict(values["model_config"])
    return values, config, load_model_weights(folder / WEIGHTS_FILE, config, output_rows=output_rows(values, config))
