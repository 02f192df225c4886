"""The PPO loop on 2 data-parallel processes (gloo, float64) equals one process with the same global batch; the
metrics file holds one line per iteration."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from local_processes import free_port, set_process_env, single_thread

from llama_course.alignment.ppo_train import PPOConfig, load_ppo_models
from llama_course.experiments.ppo import train_ppo
from llama_course.experiments.toyworld_judges import ppo_prompts

WORLD_SIZE = 2
# 8 prompts per iteration, 4 per process; mini-batches of 4 (2 per process); chunks of 2 responses.
SMALL = dict(iterations=2, batch_size=8, minibatch_size=4, chunk_size=2, max_new_tokens=8, lr=1e-3, value_lr=1e-3,
             beta=0.1, dtype="float64", seed=5)


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(output_dir=None):
    models, tokenizer = load_ppo_models()
    history = train_ppo(models, tokenizer, ppo_prompts(40, seed=3, safety_fraction=0.5), PPOConfig(**SMALL),
                        output_dir)
    return history, {"policy": models.policy.state_dict(), "value": models.value.state_dict()}


def _worker(rank: int, port: int, root: str) -> None:
    set_process_env(rank, WORLD_SIZE, port)
    torch.set_num_threads(1)
    try:
        history, states = _run(os.path.join(root, "two"))
        torch.save({"history": history, "states": states}, os.path.join(root, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo")
    with single_thread():
        single = _run(root / "one")
        mp.spawn(_worker, args=(free_port(), str(root)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(root / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]
    return {"root": root, "single": single, "ranks": ranks}


def assert_same_states(got: dict, expected: dict) -> None:
    for model in expected:
        assert got[model].keys() == expected[model].keys()
        for name in expected[model]:
            torch.testing.assert_close(got[model][name], expected[model][name], rtol=0, atol=1e-10,
                                       msg=f"{model}.{name}")


def test_two_processes_train_exactly_like_one_with_the_same_global_batch(runs):
    history, states = runs["single"]
    for rank in runs["ranks"]:
        assert_same_states(rank["states"], states)
        assert len(rank["history"]) == len(history) == SMALL["iterations"]
        for got, expected in zip(rank["history"], history, strict=True):
            for key in expected:
                if key != "seconds":
                    assert got[key] == pytest.approx(expected[key], rel=0, abs=1e-9, nan_ok=True), key
    initial = load_ppo_models()[0].policy.state_dict()
    moved = max(float((states["policy"][name].float() - initial[name]).abs().max()) for name in initial)
    assert moved > 1e-4, "the policy should have been updated"


def test_metrics_are_written_once_per_iteration_by_the_main_process(runs):
    from llama_course.training.metrics import read_metrics

    for name in ("one", "two"):
        records = read_metrics(runs["root"] / name)
        assert [r["step"] for r in records] == [1, 2]
        assert {"rm_combined", "true_combined", "kl_k1", "kl_k3", "entropy", "clip_fraction", "value_loss",
                "response_length", "no_eos"} <= records[0].keys()
        assert records[0]["kl_k1"] == pytest.approx(0.0, abs=1e-12), "the first rollout comes from the reference"
