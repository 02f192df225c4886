"""Helpers for tests that run several local gloo processes (`torch.multiprocessing.spawn`)."""

import contextlib
import os
import socket
from collections.abc import Iterator

import torch


def free_port() -> int:
    """A TCP port that nothing listens on right now, for the processes' rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_process_env(rank: int, world_size: int, port: int) -> None:
    """The environment `torchrun` would give process `rank` of `world_size` on this machine."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """torch on one thread inside the block (restored after): tiny matmuls are far faster that way than several
    processes fighting over two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
