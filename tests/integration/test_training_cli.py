"""`llama-course pretrain`: config file + flags, --help, SIGTERM saves and exits 143, loading the trained model."""

import argparse
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from llama_course.commands.pretrain import add_arguments
from llama_course.training.checkpoint import latest_checkpoint, read_trainer_state
from llama_course.training.metrics import read_metrics
from llama_course.training.pretrain import load_config, load_trained_model

SMALL_RUN = ["--batch-size", "2", "--block-size", "32", "--set", "data.documents=200",
             "--set", "data.validation_documents=10", "--set", "model.dim=32", "--set", "model.n_layers=1",
             "--set", "trainer.warmup_steps=2", "--set", "trainer.log_every=1", "--set", "trainer.progress=false",
             "--set", "trainer.checkpoint_every=1000"]
PRETRAIN = ("import sys, torch; torch.set_num_threads(1); from llama_course.cli import main; "
            "sys.exit(main(['pretrain', *sys.argv[1:]]))")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_help_documents_every_config_key():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = parser.format_help()
    for key in ("trainer.warmup_steps = 50", "trainer.weight_decay = 0.1", "data.block_size = 256", "--set",
                "model.preset", "trainer.parallelism"):
        assert key in text


def test_file_then_set_overrides_with_the_last_one_winning(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('output_dir = "x"\n[model]\npreset = "small"\n[trainer]\nsteps = 70\nlr = 0.002\n')
    config = load_config(path, ["trainer.lr=5e-4", "data.corpus=tinystories", "trainer.compile=true"])
    assert (config.output_dir, config.trainer.steps, config.trainer.lr) == ("x", 70, 5e-4)
    assert config.data.corpus == "tinystories" and config.trainer.compile is True
    assert config.model_config(vocab_size=1024).dim == 256 and config.model_config(1024).vocab_size == 1024


def test_unknown_keys_are_named_in_the_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key trainer\.lr_peak in \[trainer\]"):
        load_config(None, ["trainer.lr_peak=1"])
    with pytest.raises(ValueError, match="model.preset='llama3'"):
        load_config(None, ["model.preset=llama3"]).model_config(1024)
    with pytest.raises(ValueError, match="must look like key=value or section.key=value"):
        load_config(None, ["trainer.lr"])


def test_sigterm_saves_a_checkpoint_and_exits_then_the_model_loads(tmp_path):
    command = [sys.executable, "-c", PRETRAIN, "--output-dir", str(tmp_path), "--steps", "100000", *SMALL_RUN]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((tmp_path / "metrics.jsonl").exists() and len(read_metrics(tmp_path)) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    checkpoint = latest_checkpoint(tmp_path)
    step = read_trainer_state(checkpoint)["step"]
    assert f"stopped by SIGTERM at step {step}; saved {checkpoint}" in stderr and "Traceback" not in stderr
    assert 2 <= step < 100000 and read_metrics(tmp_path)[-1]["step"] == step
    model = load_trained_model(tmp_path)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert model.config.dim == 32 and state["metadata"]["model_config"]["n_layers"] == 1
    tokens = torch.tensor([[1, 5, 9]])
    assert torch.isfinite(model(tokens).logits).all()


def test_print_config_shows_the_resolved_values(capsys):
    from llama_course.commands.pretrain import run

    run(parse(["--print-config", "--lr", "0.01", "--preset", "small", "--set", "trainer.steps=5",
                "--set", "trainer.warmup_steps=1"]))
    printed = json.loads(capsys.readouterr().out)
    assert printed["trainer"]["lr"] == 0.01 and printed["model"]["preset"] == "small"
    assert printed["trainer"]["steps"] == 5
