"""Helpers of exercise 9's tasks 4 and 5 (tested in `ex09_scaling_out`): the SwiGLU block split over ranks by hand.

w1 and w3 are split by rows (column-parallel: rank r computes hidden features [r f/N, (r+1) f/N)), w2 by
columns (row-parallel: rank r's partial output sums over its hidden slice only), and one all-reduce adds the
partial outputs: Shoeybi et al. (2019), section 3; `training/parallel.py` does the same with DTensor. Task 5 is
graded on 2 gloo processes forked from the test (they inherit the student's function), each given its own
shards; every rank must return the single-process output.
"""

import contextlib
import multiprocessing
import os
import signal
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist

from llama_course.layers.swiglu import FeedForward

WORLD_SIZE = 2
RANK_TIMEOUT_S = 8.0  # under the grader's 10 s per test, so a hung collective gets its own message


def reference_shards(w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, rank: int, world_size: int):
    part = slice(rank * w1.shape[0] // world_size, (rank + 1) * w1.shape[0] // world_size)
    return w1[part], w3[part], w2[:, part]


def random_swiglu(dim: int, hidden: int, seed: int) -> FeedForward:
    torch.manual_seed(seed)
    return FeedForward(dim, hidden).double()


class _NoRendezvous(Exception):
    """The ranks could not connect to each other."""


def _rank_main(function, rank: int, store: str, cases: list, sender) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE,
                                timeout=timedelta(seconds=RANK_TIMEOUT_S))
    except RuntimeError as error:  # the ranks could not connect (a loaded machine): not the student's doing
        sender.send(("no rendezvous", f"{type(error).__name__}: {error}"))
        os._exit(0)
    try:
        outputs = []
        for x, w1, w3, w2 in cases:
            out = function(x, *reference_shards(w1, w3, w2, rank, WORLD_SIZE))
            outputs.append(out.detach().numpy() if isinstance(out, torch.Tensor) else out)
        sender.send(("ok", outputs))
    except NotImplementedError:
        sender.send(("not implemented", ""))
    except BaseException as error:  # the student's code may raise anything
        sender.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os._exit(0)


def on_gloo_ranks(function, cases: list, attempts: int = 3) -> list[list]:
    """Each rank's outputs of `function(x, w1_shard, w3_shard, w2_shard)` for every case, from 2 forked processes.

    `os.fork` itself: the grader's test runs in a daemonic process, which multiprocessing forbids to have children.
    Ranks that fail to connect to each other (gloo's rendezvous, on a loaded machine) are forked again, up to
    `attempts` times in all.
    """
    if not hasattr(os, "fork"):
        raise AssertionError("this test forks 2 processes, which this platform cannot do: grade it on Linux, macOS "
                             "or Colab")
    for _ in range(attempts):
        try:
            return _fork_ranks(function, cases)
        except _NoRendezvous as error:
            failure = error
    raise AssertionError(f"the {WORLD_SIZE} gloo processes could not connect {attempts} times (not your code; rerun "
                         f"the grader): {failure}"[:400])


def _fork_ranks(function, cases: list) -> list[list]:
    with tempfile.TemporaryDirectory() as folder:
        pipes = [multiprocessing.Pipe(duplex=False) for _ in range(WORLD_SIZE)]
        pids = []
        for rank, (receiver, sender) in enumerate(pipes):
            pid = os.fork()
            if pid == 0:
                receiver.close()
                _rank_main(function, rank, os.path.join(folder, "store"), cases, sender)  # never returns
            sender.close()
            pids.append(pid)
        try:
            results = []
            for rank, (receiver, _) in enumerate(pipes):
                if not receiver.poll(RANK_TIMEOUT_S):
                    raise AssertionError(f"rank {rank} did not finish within {RANK_TIMEOUT_S:g} s: does every rank "
                                         "call all_reduce exactly once, on a tensor of the same shape?")
                status, value = receiver.recv()
                if status == "no rendezvous":
                    raise _NoRendezvous(value)
                if status == "not implemented":
                    raise NotImplementedError
                if status == "error":
                    raise AssertionError(f"on rank {rank} of {WORLD_SIZE}, your function raised {value}"[:400])
                results.append(value)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    return results
