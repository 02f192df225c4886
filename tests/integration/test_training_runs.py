"""Training runs survive people: Ctrl-C saves (also under torchrun), one run per output directory, a torn
metrics line does not block a resume, and a stalled rank fails the others after the collective timeout."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from local_processes import free_port, set_process_env
from test_training_cli import PRETRAIN, SMALL_RUN
from tiny_training import tiny_blocks, tiny_config, tiny_model

from llama_course.training.checkpoint import latest_checkpoint, read_trainer_state
from llama_course.training.distributed import init_distributed
from llama_course.training.metrics import read_metrics
from llama_course.training.trainer import Trainer

REPOSITORY = Path(__file__).resolve().parents[2]


def trainer(output_dir, **overrides) -> Trainer:
    return Trainer(tiny_model(), tiny_blocks(), tiny_config(**overrides), output_dir)


def test_a_second_run_on_the_same_output_directory_is_refused_until_the_first_ends(tmp_path, one_thread):
    first = trainer(tmp_path, steps=2)
    owner = rf"in use by another training run \(process {os.getpid()} on .*choose another"
    with pytest.raises(ValueError, match=owner):
        trainer(tmp_path, steps=2)
    first.fit()
    assert trainer(tmp_path, steps=4).fit().step == 4  # the lock went with the first run


def test_a_refused_resume_leaves_the_directory_unlocked(tmp_path, one_thread):
    trainer(tmp_path, steps=4).fit(until_step=2)
    with pytest.raises(ValueError, match="seed: 0 -> 1"):
        trainer(tmp_path, steps=4, seed=1)
    assert trainer(tmp_path, steps=4).fit().step == 4


def test_a_torn_last_metrics_line_is_skipped_and_dropped_at_resume(tmp_path, one_thread):
    trainer(tmp_path, steps=4).fit(until_step=2)
    with (tmp_path / "metrics.jsonl").open("a") as file:
        file.write('{"step": 3, "loss": 4.1')  # a kill in the middle of a write
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    trainer(tmp_path, steps=4).fit()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    lines.insert(1, "garbage")
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 2 of .*metrics.jsonl is not JSON \('garbage'\)"):
        read_metrics(tmp_path)


def wait_for_metrics(process: subprocess.Popen, output_dir: Path, lines: int) -> None:
    deadline = time.monotonic() + 180
    while not ((output_dir / "metrics.jsonl").exists() and len(read_metrics(output_dir)) >= lines):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)


def test_ctrl_c_saves_says_where_and_exits_130_then_the_run_resumes(tmp_path):
    command = [sys.executable, "-c", PRETRAIN, "--output-dir", str(tmp_path), "--steps", "100000", *SMALL_RUN]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_metrics(process, tmp_path, 2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    checkpoint = latest_checkpoint(tmp_path)
    step = read_trainer_state(checkpoint)["step"]
    assert f"pretrain: stopped by SIGINT at step {step}; saved {checkpoint}: run the same command" in stderr
    assert 2 <= step < 100000 and read_metrics(tmp_path)[-1]["step"] == step
    resumed = subprocess.run([sys.executable, "-c", PRETRAIN, "--output-dir", str(tmp_path), "--steps",
                              str(step + 2), *SMALL_RUN], capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    report = f"resuming from {checkpoint} at step {step}; changed since then: steps: 100000 -> {step + 2}"
    assert report in resumed.stdout
    assert read_trainer_state(latest_checkpoint(tmp_path))["step"] == step + 2


def test_ctrl_c_under_torchrun_saves_on_every_rank_and_exits_non_zero(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port",
               str(free_port()), "-m", "llama_course.cli", "pretrain", "--output-dir", str(tmp_path), "--steps",
               "100000", "--device", "cpu", "--parallelism", "fsdp", *SMALL_RUN]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPOSITORY,
                               env=os.environ | {"OMP_NUM_THREADS": "1"})
    wait_for_metrics(process, tmp_path, 2)
    process.send_signal(signal.SIGINT)  # torchrun forwards it to both workers
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    checkpoint = latest_checkpoint(tmp_path)
    assert f"stopped by SIGINT at step {read_trainer_state(checkpoint)['step']}; saved {checkpoint}" in stderr
    assert {p.name for p in checkpoint.glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}
    assert (checkpoint / "sharded").is_dir()


def _stalled_pair(rank: int, port: int, result_file: str) -> None:
    set_process_env(rank, 2, port)
    torch.set_num_threads(1)
    init_distributed("cpu", timeout=3.0)
    try:
        if rank == 1:
            time.sleep(30)  # a stalled rank (as under SIGSTOP): it never joins the all-reduce
            return
        started = time.monotonic()
        try:
            dist.all_reduce(torch.ones(1))
            outcome = "returned"
        except RuntimeError as error:
            outcome = f"raised after {time.monotonic() - started:.1f}s: {str(error).splitlines()[0]}"
        Path(result_file).write_text(outcome)
    finally:
        if rank == 0:
            os._exit(0)  # do not wait on the stalled rank in destroy_process_group


def test_a_stalled_rank_fails_the_others_after_the_collective_timeout(tmp_path):
    result = tmp_path / "result.txt"
    context = mp.start_processes(_stalled_pair, args=(free_port(), str(result)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 60
    while not result.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    for process in context.processes:
        process.kill()
    outcome = result.read_text()
    assert outcome.startswith("raised after"), outcome
    assert 2.5 < float(outcome.split()[2].rstrip("s:")) < 15
