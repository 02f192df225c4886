"""The tiny model, data and trainer settings that the trainer, security, distributed and command tests share, and
the sharded files (a Distributed Checkpoint, a two-shard Hugging Face folder) built from them."""

import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from llama_course.config import ModelConfig
from llama_course.data import pack_token_lists
from llama_course.interop import save_hf_checkpoint
from llama_course.model import Llama
from llama_course.training.batches import TensorBlocks
from llama_course.training.checkpoint import save_checkpoint
from llama_course.training.optim import AdamWConfig, build_optimizer
from llama_course.training.trainer import Trainer, TrainerConfig

TINY = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16, max_seq_len=32,
                   attention_backend="eager")


def tiny_blocks(n_documents: int = 120, block_size: int = 16, seed: int = 0) -> TensorBlocks:
    """Packed random documents of 5..30 tokens: labels carry IGNORE_INDEX at document boundaries."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 30, (n_documents,), generator=generator).tolist()
    documents = [torch.randint(0, TINY.vocab_size, (n,), generator=generator).tolist() for n in lengths]
    packed = pack_token_lists(documents, block_size)
    return TensorBlocks(**{name: torch.tensor(column) for name, column in packed.items()})


def tiny_model(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    return Llama(TINY)


def tiny_config(**overrides) -> TrainerConfig:
    values = dict(steps=6, micro_batch_size=4, grad_accum_steps=2, lr=1e-2, warmup_steps=2, dtype="float64",
                  progress=False, log_every=1, eval_every=0, checkpoint_every=2, device="cpu")
    return TrainerConfig(**(values | overrides))


def train(output_dir, seed=0, until_step=None, **overrides):
    trainer = Trainer(tiny_model(seed), tiny_blocks(), tiny_config(**overrides), output_dir)
    return trainer, trainer.fit(until_step=until_step)


def sharded_checkpoint(output_dir: Path) -> tuple[Llama, Path]:
    """A Distributed Checkpoint written by one process (FSDP runs write the same files, one per rank)."""
    model = tiny_model(3)
    optimizer = build_optimizer(model, AdamWConfig())
    state = {"step": 5, "tokens": 0, "data": {"position": 0, "seed": 0},
             "metadata": {"model_config": TINY.to_dict()}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns that no process group is initialised
        return model, save_checkpoint(output_dir, 5, model, optimizer, state, sharded=True)


def sharded_hf_folder(folder: Path, model: Llama) -> dict[str, str]:
    """`model` as a two-shard Hugging Face folder; returns the index's weight map."""
    save_hf_checkpoint(model, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(weights)
    halves = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2:]}
    for shard, shard_names in halves.items():
        save_file({name: weights[name] for name in shard_names}, folder / shard)
    weight_map = {name: shard for shard, shard_names in halves.items() for name in shard_names}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return weight_map
