"""Tensor and sequence parallelism, and 2D (FSDP2 x TP) meshes, on CPU processes (gloo, float64) against one process.

Two spawns run every scenario (starting processes is the slow part): 2 processes with TP=2 (with and without
SP), then 4 processes on a 2 x 2 (data x tensor) mesh, which also save a checkpoint that a 4 x 1 (FSDP only)
run resumes and saves again, for a single process to finish. Every run sees the same 8 blocks per step as the
single-process reference (tests/unit/test_training.py's tiny model and data).
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from local_processes import free_port, set_process_env, single_thread
from test_distributed import _full_state, assert_same_parameters
from tiny_training import TINY, train

from llama_course.config import PRESETS
from llama_course.training.checkpoint import latest_checkpoint, read_trainer_state
from llama_course.training.parallel import build_mesh, check_tensor_parallel_degree
from llama_course.training.trainer import TrainerConfig


def _summary(trainer, result) -> dict:
    wq = trainer.raw_model.layers[0].attention.wq.weight
    return {"losses": result.losses, "state": _full_state(trainer.raw_model), "wq_local_shape": tuple(
        wq.to_local().shape), "local_heads": trainer.raw_model.layers[0].attention.n_heads}


def _tensor_parallel_worker(rank: int, port: int, root: str) -> None:
    set_process_env(rank, 2, port)
    torch.set_num_threads(1)
    try:
        results, trainers = {}, {}
        for name, sequence_parallel in (("tp_sp", True), ("tp", False)):
            trainers[name], result = train(os.path.join(root, name), tensor_parallel=2,
                                           sequence_parallel=sequence_parallel, checkpoint_every=0)
            results[name] = _summary(trainers[name], result)
        try:  # SP splits the sequence evenly: an odd length is refused by name
            trainers["tp_sp"].model(torch.zeros(1, 15, dtype=torch.long))
        except ValueError as error:
            results["odd_length_error"] = str(error)
        if rank == 0:
            torch.save(results, os.path.join(root, "results.pt"))
    finally:
        dist.destroy_process_group()


def _two_dimensional_worker(rank: int, port: int, root: str) -> None:
    set_process_env(rank, 4, port)
    torch.set_num_threads(1)
    two_by_two = dict(tensor_parallel=2, parallelism="fsdp", micro_batch_size=2, checkpoint_every=0)
    try:
        trainer, result = train(os.path.join(root, "fsdp_tp"), **two_by_two)
        results = {"fsdp_tp": _summary(trainer, result)}
        # Resharding: saved at step 2 on the 2 x 2 mesh, resumed on 4 x 1 (FSDP over 4) up to step 4.
        _, saved = train(os.path.join(root, "reshard"), until_step=2, **two_by_two)
        _, resumed = train(os.path.join(root, "reshard"), until_step=4, parallelism="fsdp", micro_batch_size=1,
                           checkpoint_every=0)
        results["reshard"] = {"losses": saved.losses + resumed.losses, "saved_by_2x2": read_trainer_state(
            os.path.join(root, "reshard", "checkpoints", "step_00000002"))}
        if rank == 0:
            torch.save(results, os.path.join(root, "results.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process reference, the two spawns, then a single process finishing the resharded run."""
    root = tmp_path_factory.mktemp("tensor_parallel")
    with single_thread():
        single_trainer, single = train(root / "single")
        mp.spawn(_tensor_parallel_worker, args=(free_port(), str(root / "two")), nprocs=2, join=True)
        mp.spawn(_two_dimensional_worker, args=(free_port(), str(root / "four")), nprocs=4, join=True)
        finished_trainer, finished = train(root / "four" / "reshard")
    return {
        "root": root,
        "single": {"losses": single.losses, "state": single_trainer.raw_model.state_dict()},
        "finished_on_one": {"losses": finished.losses, "state": finished_trainer.raw_model.state_dict()},
        **torch.load(root / "two" / "results.pt", weights_only=True),
        **torch.load(root / "four" / "results.pt", weights_only=True),
    }


@pytest.mark.parametrize("scheme", ["tp_sp", "tp", "fsdp_tp"])
def test_parallel_training_equals_single_process_over_six_steps(runs, scheme):
    assert len(runs[scheme]["losses"]) == 6
    assert runs[scheme]["losses"] == pytest.approx(runs["single"]["losses"], rel=0, abs=1e-10)
    assert_same_parameters(runs[scheme]["state"], runs["single"]["state"])


def test_each_rank_holds_its_share_of_the_heads_and_of_the_weights(runs):
    dim = TINY.dim  # wq is (n_heads * head_dim, dim) = (dim, dim)
    for scheme in ("tp_sp", "tp"):
        assert runs[scheme]["wq_local_shape"] == (dim // 2, dim)
        assert runs[scheme]["local_heads"] == TINY.n_heads // 2
    assert runs["fsdp_tp"]["wq_local_shape"] == (dim // 4, dim)  # FSDP shards the TP shard again


def test_sequence_parallelism_refuses_a_length_it_cannot_split(runs):
    assert "sequence length 15 is not divisible by tensor_parallel=2" in runs["odd_length_error"]


def test_checkpoint_resharded_from_2x2_to_4x1_to_one_process_continues_exactly(runs):
    saved_by_2x2 = runs["reshard"]["saved_by_2x2"]
    assert (saved_by_2x2["world_size"], saved_by_2x2["tensor_parallel"], saved_by_2x2["parallelism"]) == (4, 2, "fsdp")
    saved_by_4x1 = read_trainer_state(latest_checkpoint(runs["root"] / "four" / "reshard").with_name("step_00000004"))
    assert (saved_by_4x1["world_size"], saved_by_4x1["tensor_parallel"]) == (4, 1)
    assert latest_checkpoint(runs["root"] / "four" / "reshard").name == "step_00000006"
    losses = runs["reshard"]["losses"] + runs["finished_on_one"]["losses"]
    assert losses == pytest.approx(runs["single"]["losses"], rel=0, abs=1e-10)
    assert_same_parameters(runs["finished_on_one"]["state"], runs["single"]["state"])


@pytest.mark.parametrize(("field", "value", "degree"), [
    ("n_heads", 6, 4), ("n_kv_heads", 2, 4), ("vocab_size", 1001, 2), ("multiple_of", 33, 2)])
def test_sizes_that_do_not_divide_by_the_degree_are_refused_by_name(field, value, degree):
    config = PRESETS["tiny"]
    values = config.to_dict() | {field: value}
    if field == "n_heads":
        values |= {"dim": 96, "n_kv_heads": 6}
    if field == "n_kv_heads":
        values |= {"n_heads": 4}
    broken = type(config).from_dict(values)
    name = "hidden_dim" if field == "multiple_of" else field
    with pytest.raises(ValueError, match=f"{name}=\\d+ is not divisible by tensor_parallel={degree}"):
        check_tensor_parallel_degree(broken, degree)
    check_tensor_parallel_degree(broken, 1)


def test_bad_tensor_parallel_settings_are_refused():
    with pytest.raises(ValueError, match="world size 6 is not divisible by tensor_parallel=4"):
        build_mesh("cpu", 6, 4)
    with pytest.raises(ValueError, match="tensor_parallel=0 must be a positive integer"):
        TrainerConfig(steps=2, warmup_steps=0, tensor_parallel=0)
    with pytest.raises(ValueError, match="activation_checkpointing='full'"):
        TrainerConfig(steps=2, warmup_steps=0, tensor_parallel=2, activation_checkpointing="full")

