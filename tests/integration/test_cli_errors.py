"""Every command answers bad input with one line naming the value and the fix (exit status 2), never a traceback.

The table runs `llama-course COMMAND ...` in this process with each bad input. Flags out of range are refused
by argparse before any work (its usage line, then the error); everything else is exactly one line.
"""

import json
import math
import socket
import time

import huggingface_hub.constants
import pytest
import torch
from tiny_training import sharded_checkpoint, sharded_hf_folder

from llama_course import cli
from llama_course.alignment.sft import export_model
from llama_course.config import ModelConfig
from llama_course.model import Llama
from llama_course.toyworld import load_corpus
from llama_course.toyworld.corpus import CorpusUnavailableError

CONFIG = ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=1024, multiple_of=16, max_seq_len=64)


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Damaged model folders and files, by name."""
    root = tmp_path_factory.mktemp("bad")
    paths = {}

    def model_folder(name, edit=None, damage=None):
        folder = root / name
        export_model(Llama(CONFIG), folder, {"note": name})
        if edit:
            card = json.loads((folder / "config.json").read_text())
            card["model_config"] |= edit
            (folder / "config.json").write_text(json.dumps(card))
        if damage:
            data = (folder / "model.safetensors").read_bytes()
            (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
        paths[name] = folder

    model_folder("truncated", damage=True)
    model_folder("string-dim", edit={"dim": "32"})
    model_folder("billion-layers", edit={"n_layers": 10**9})
    model_folder("nan-rope", edit={"rope_theta": math.nan})
    sharded_checkpoint(root / "sharded-run")
    paths["sharded-run"] = root / "sharded-run"
    weight_map = sharded_hf_folder(root / "hf-outside", Llama(CONFIG))
    outside = {name: f"../{shard}" for name, shard in weight_map.items()}
    (root / "hf-outside" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": outside}))
    paths["hf-outside"] = root / "hf-outside"
    (root / "garbage.toml").write_text("[trainer\nsteps = ")
    paths["garbage-toml"] = root / "garbage.toml"
    paths["missing"] = root / "missing"
    paths["root"] = root
    return paths


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse refused a flag
        code = exit.code
    return code, capsys.readouterr().err


ARGPARSE = "argparse"  # the row's error comes from a flag's type: after argparse's usage line
CASES = [
    # chat
    (["chat", "--temperature", "nan"], ARGPARSE, r"argument --temperature: nan is not in \[0, inf\]"),
    (["chat", "--top-p", "2"], ARGPARSE, r"argument --top-p: 2 is not in \(0, 1\]"),
    (["chat", "--max-new-tokens", "0"], ARGPARSE, r"argument --max-new-tokens: 0 is not in \[1, inf\]"),
    (["chat", "--device", "tpu9"], 1, r"device='tpu9' is not a device; use auto, cpu, cuda, cuda:N or mps"),
    (["chat", "--checkpoint", "{missing}"], 1, r"base='.*missing' is neither a shipped model"),
    (["chat", "--checkpoint", "{truncated}"], 1, r"is not a valid safetensors file .*truncated or corrupt"),
    (["chat", "--checkpoint", "{string-dim}"], 1, r"dim='32' must be a positive integer"),
    (["chat", "--checkpoint", "{billion-layers}"], 1, r"the config says n_layers=1000000000 but the weights"),
    (["chat", "--checkpoint", "{nan-rope}"], 1, r"rope_theta=nan must be a positive finite number"),
    (["chat", "--checkpoint", "{sharded-run}"], 1, r"sharded \(Distributed Checkpoint\).*--trust-pickle"),
    # pretrain (flags are checked when the config is built, before any data)
    (["pretrain", "--steps", "0"], 1, r"steps=0 must be a positive integer"),
    (["pretrain", "--lr", "nan"], 1, r"--lr=nan is not a finite number"),
    (["pretrain", "--batch-size", "-2"], 1, r"micro_batch_size=-2 must be a positive integer"),
    (["pretrain", "--device", "tpu9"], 1, r"device='tpu9' is not a device"),
    (["pretrain", "--preset", "llama3"], 1, r"model.preset='llama3' is unknown; choose one of"),
    (["pretrain", "--set", 'trainer.steps="many"'], 1, r"trainer.steps='many' must be of type int"),
    (["pretrain", "--set", "model.norm_eps=nan"], 1, r"norm_eps=nan must be a positive finite number"),
    (["pretrain", "--set", "trainer=3"], 1, r"\[trainer\] must be a table of keys, got 3"),
    (["pretrain", "--config", "{missing}"], 1, r"no config file at"),
    (["pretrain", "--config", "{garbage-toml}"], 1, r"garbage.toml is not valid TOML"),
    # convert, pretrained
    (["convert", "{missing}", "{root}/out", "--from", "hf", "--to", "meta"], 1, r"config.json does not exist"),
    (["convert", "{hf-outside}", "{root}/out", "--from", "hf", "--to", "meta"], 1,
     r"names the shard '\.\./a\.safetensors' .* outside the checkpoint folder"),
    (["convert", "{missing}", "{root}/out", "--from", "hf", "--to", "meta", "--num-shards", "0"], ARGPARSE,
     r"argument --num-shards: 0 is not in \[1, inf\]"),
    (["pretrained", "consolidate", "{sharded-run}", "{root}/shared"], 1, r"pass --trust-pickle if you wrote it"),
    (["pretrained", "export", "{missing}", "{root}/exported"], 1, r"holds no single-file checkpoint"),
    (["pretrained", "rescore", "{missing}", "--temperatures", "1", "nan"], ARGPARSE,
     r"argument --temperatures: nan is not in \[0, inf\]"),
    # the other commands: their own checks, and the NaN guard every command shares
    (["sft", "--lr", "nan", "--print-config"], 1, r"--lr=nan is not a finite number"),
    (["sft", "--base", "{missing}", "--print-config", "--batch-size", "0"], 1,
     r"micro_batch_size=0 must be a positive integer"),
    (["train-rm", "--base", "nowhere"], 1, r"base='nowhere' is neither a shipped model"),
    (["rejection-sample", "--temperature", "inf"], 1, r"--temperature=inf is not a finite number"),
    (["ppo", "--policy", "nowhere"], 1, r"base='nowhere' is neither a shipped model"),
    (["gatt", "--epochs", "nan"], 1, r"--epochs=nan is not a finite number"),
    (["evaluate", "nowhere", "sft"], 1, r"no shipped model named 'nowhere'"),
    (["grade", "missing.ipynb", "--timeout", "nan"], 1, r"--timeout=nan is not a finite number"),
    (["grade", "{missing}"], 1, r"no notebook at '.*missing'"),
    (["build-tokenizer", "--vocab-size", "3"], 1, r"vocab_size=3 is too small"),
    (["sync-notebooks", "missing.md"], 1, r"missing.md is not an existing chapter .md file"),
    (["rlhf", "--rounds", "0"], 1, r"rounds=0 must be a positive integer"),
    (["presets", "extra"], ARGPARSE, r"unrecognized arguments: extra"),
]


@pytest.mark.parametrize(("argv", "lines", "message"), CASES, ids=[" ".join(case[0][:3]) for case in CASES])
def test_bad_input_is_one_line_naming_the_value(bad, capsys, one_thread, argv, lines, message):
    argv = [arg.format(**bad) if "{" in arg else arg for arg in argv]
    code, stderr = run_cli(argv, capsys)
    assert code == 2 and "Traceback" not in stderr, stderr
    printed = stderr.strip().splitlines()
    if lines == ARGPARSE:
        assert printed[0].startswith("usage: llama-course") and "error: " in printed[-1], stderr
    else:
        assert len(printed) == lines, stderr
        assert printed[0].startswith(f"llama-course {argv[0]}: error: "), stderr
    assert __import__("re").search(message, printed[-1]), stderr


def test_cuda_asked_for_without_cuda_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, stderr = run_cli(["chat", "--device", "cuda"], capsys)
    assert code == 2
    assert stderr == ("llama-course chat: error: device='cuda' was asked for but CUDA is not available; use "
                      "--device cpu\n")


def test_a_bug_is_one_line_with_exit_1_and_debug_shows_its_traceback(monkeypatch, capsys):
    from llama_course.commands import presets

    def broken(*args, **kwargs):
        raise TypeError("boom")

    monkeypatch.setattr(presets, "count_parameters", broken)
    code, stderr = run_cli(["presets"], capsys)
    assert code == 1 and stderr == ("llama-course presets: internal error (a bug; rerun with --debug for the traceback "
                                    "and report it): TypeError: boom\n")
    for argv in (["--debug", "presets"], ["presets", "--debug"]):
        with pytest.raises(TypeError, match="boom"):
            cli.main(argv)


def test_a_hub_corpus_offline_fails_in_seconds_naming_the_toy_corpus(monkeypatch):
    """The Hub's address accepts a connection but never answers (a dead proxy): 3 s, not half a minute."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        started = time.monotonic()
        expected = rf"{endpoint} did not answer within 3 s\. Without a network .* load_corpus\('toy-stories'\)"
        with pytest.raises(CorpusUnavailableError, match=expected):
            load_corpus("tinystories")
        assert time.monotonic() - started < 5
    with pytest.raises(CorpusUnavailableError, match=r"is unreachable .*load_corpus\('toy-preferences'\)"):
        load_corpus("hh-rlhf")  # nothing listens there any more: refused at once
