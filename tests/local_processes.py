"""Helpers for tests that run several local gloo processes (`torch.multiprocessing.spawn`)."""

import os
import socket


def free_port() -> int:
    """A TCP port that nothing listens on right now, for the processes' rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_process_env(rank: int, world_size: int, port: int) -> None:
    """The environment `torchrun` would give process `rank` of `world_size` on this machine."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
