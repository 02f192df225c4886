import subprocess
import sys

import pytest

from llama_course.cli import main


def test_presets_prints_paper_parameter_counts(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "llama2-70b" in out and "68,976,648,192" in out
    assert "llama1-33b" in out and "32,528,943,616" in out


def test_help_lists_commands():
    result = subprocess.run([sys.executable, "-m", "llama_course.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "presets" in result.stdout


def test_convert_meta_to_hf_and_back_keeps_the_logits(tmp_path):
    import torch

    from llama_course.config import ModelConfig
    from llama_course.interop import load_meta_checkpoint, save_meta_checkpoint
    from llama_course.model import Llama

    torch.manual_seed(0)
    model = Llama(ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=50, multiple_of=16)).eval()
    save_meta_checkpoint(model, tmp_path / "meta", num_shards=2)
    assert main(["convert", str(tmp_path / "meta"), str(tmp_path / "hf"), "--from", "meta", "--to", "hf",
                 "--max-seq-len", "2048"]) == 0
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back"), "--from", "hf", "--to", "meta"]) == 0
    tokens = torch.tensor([[1, 7, 3, 9]])
    back = load_meta_checkpoint(tmp_path / "back", max_seq_len=2048).eval()
    torch.testing.assert_close(back(tokens).logits, model(tokens).logits, rtol=0, atol=1e-6)
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back"), "--from", "hf", "--to", "meta"]) == 2


def test_every_command_prints_its_help(capsys):
    from llama_course.cli import SUBCOMMAND_MODULES

    for name, _, _ in SUBCOMMAND_MODULES:
        with pytest.raises(SystemExit) as exit_code:
            main([name, "--help"])
        assert exit_code.value.code == 0 and f"llama-course {name}" in capsys.readouterr().out


TRAINING_COMMANDS = {  # command: (a key of its config file, a key --set overrides, where config_from_args reads them)
    "pretrain": ("data.block_size", "trainer.lr", lambda config: (config.data.block_size, config.trainer.lr)),
    "sft": ("data.block_size", "trainer.lr", lambda config: (config.data.block_size, config.trainer.lr)),
    "train-rm": ("batch_size", "lr", lambda config: (config.batch_size, config.lr)),
    "rejection-sample": ("block_size", "lr", lambda config: (config.block_size, config.lr)),
    "ppo": ("chunk_size", "lr", lambda config: (config.chunk_size, config.lr)),
    "gatt": ("batch_size", "lr", lambda config: (config.batch_size, config.lr)),
    "rlhf": ("rm_batch_size", "rm_lr", lambda config: (config.rm_batch_size, config.rm_lr)),
}


@pytest.mark.parametrize("name", TRAINING_COMMANDS)
def test_every_training_command_reads_a_config_file_and_set_overrides(name, tmp_path, capsys):
    import importlib

    from llama_course.cli import SUBCOMMAND_MODULES, build_parser

    file_key, set_key, read = TRAINING_COMMANDS[name]
    section, _, key = file_key.rpartition(".")
    path = tmp_path / "config.toml"
    path.write_text((f"[{section}]\n" if section else "") + f"{key} = 48\n")
    args = build_parser().parse_args([name, "--config", str(path), "--set", f"{set_key}=0.0123"])
    module = importlib.import_module(dict((n, m) for n, m, _ in SUBCOMMAND_MODULES)[name])
    config = module.config_from_args(args, 0) if name == "rlhf" else module.config_from_args(args)
    assert read(config) == (48, 0.0123)
    with pytest.raises(SystemExit):
        main([name, "--help"])
    assert f"{set_key.rpartition('.')[2]} = " in capsys.readouterr().out  # the epilog lists every key
    assert main([name, "--config", str(path), "--set", "no_such_key=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
