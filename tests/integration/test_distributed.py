"""DDP and FSDP2 on 2 CPU processes (gloo, float64) against single-process training; sharded checkpoints.

One spawn of 2 processes runs every distributed scenario (starting processes is the slow part); the tests
then compare its results with single-process runs of the same global batches (8 blocks per step: 4 x 2
micro-batches on one process, 2 x 2 on each of two).
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from local_processes import free_port, set_process_env, single_thread
from tiny_training import train
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from llama_course.training.checkpoint import latest_checkpoint

WORLD_SIZE = 2
TWO_PROCESSES = dict(micro_batch_size=2, grad_accum_steps=2, checkpoint_every=0)  # save at the end only


def _full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _worker(rank: int, port: int, root: str) -> None:
    set_process_env(rank, WORLD_SIZE, port)
    torch.set_num_threads(1)
    try:
        results = {}
        for name, parallelism, seed, until in (
            ("ddp", "ddp", 0, None),
            ("fsdp", "fsdp", 0, None),
            ("fsdp_saved_at_3", "fsdp", 0, 3),  # a sharded checkpoint, to be resumed on 1 process
            ("single_saved_at_3", "fsdp", 123, None),  # resumes the parent's 1-process checkpoint on 2
        ):
            trainer, result = train(os.path.join(root, name), seed=seed, until_step=until, parallelism=parallelism,
                                    **TWO_PROCESSES)
            results[name] = {"losses": result.losses, "state": _full_state(trainer.raw_model),
                             "sharded": trainer.parallelism == "fsdp" and any(
                                 hasattr(p, "full_tensor") for p in trainer.raw_model.parameters())}
        if rank == 0:
            torch.save(results, os.path.join(root, "results.pt"))
        dist.barrier()  # no rank tears the process group down while the other still uses it
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Single-process references, then the 2-process scenarios, then 1-process resumption of a sharded save."""
    root = tmp_path_factory.mktemp("distributed")
    with single_thread():
        single_trainer, single = train(root / "single")
        train(root / "single_saved_at_3", until_step=3)
        mp.spawn(_worker, args=(free_port(), str(root)), nprocs=WORLD_SIZE, join=True)
        results = torch.load(root / "results.pt", weights_only=True)
        resumed_trainer, resumed = train(root / "fsdp_saved_at_3", seed=123)
    return {
        "root": root,
        "single": {"losses": single.losses, "state": single_trainer.raw_model.state_dict()},
        "resumed_on_one": {"losses": resumed.losses, "state": resumed_trainer.raw_model.state_dict()},
        **results,
    }


def assert_same_parameters(got: dict, expected: dict, atol: float = 1e-10) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_training_equals_single_process(runs, strategy):
    assert runs[strategy]["losses"] == pytest.approx(runs["single"]["losses"], rel=0, abs=1e-10)
    assert len(runs[strategy]["losses"]) == 6
    assert_same_parameters(runs[strategy]["state"], runs["single"]["state"])


def test_fsdp_really_shards_the_parameters(runs):
    assert runs["fsdp"]["sharded"] and not runs["ddp"]["sharded"]
    assert (latest_checkpoint(runs["root"] / "fsdp") / "sharded" / ".metadata").exists()
    assert (latest_checkpoint(runs["root"] / "ddp") / "model.safetensors").exists()


def test_sharded_checkpoint_of_two_processes_resumes_on_one(runs):
    losses = runs["fsdp_saved_at_3"]["losses"] + runs["resumed_on_one"]["losses"]
    assert losses == pytest.approx(runs["single"]["losses"], rel=0, abs=1e-10)
    assert_same_parameters(runs["resumed_on_one"]["state"], runs["single"]["state"])


def test_one_process_checkpoint_resumes_on_two(runs):
    assert len(runs["single_saved_at_3"]["losses"]) == 3
    assert runs["single_saved_at_3"]["losses"] == pytest.approx(runs["single"]["losses"][3:], rel=0, abs=1e-10)
    assert_same_parameters(runs["single_saved_at_3"]["state"], runs["single"]["state"])
