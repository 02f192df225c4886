"""`config_files`: any nested config dataclass from a TOML file, flags and `--set`, each default in the dataclass."""

import argparse
from dataclasses import dataclass, field

import pytest

from llama_course.config_files import (
    add_config_arguments,
    add_config_flag,
    build_config,
    config_settings,
    config_values,
    load_config,
    parse_override,
)


@dataclass
class Optimizer:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip: float | None = None


@dataclass(frozen=True)
class Run:
    name: str = "run"
    steps: int = 10
    compile: bool = False
    turns: tuple[int, int] = (2, 4)
    extra: dict = field(default_factory=dict)
    optimizer: Optimizer = field(default_factory=lambda: Optimizer(lr=5e-4))

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps={self.steps} must be at least 1")


def test_defaults_come_from_the_dataclass_and_its_sections():
    config = load_config(Run)
    assert config == Run() and config.optimizer.lr == 5e-4  # the section's default is the enclosing default's


def test_nested_file_values_are_typed_by_the_fields(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('name = "a"\nsteps = 3\nturns = [1, 5]\n[optimizer]\nlr = 1\nbetas = [0.8, 1]\nclip = 2\n'
                    '[extra]\nanything = "goes"\n')
    config = load_config(Run, path)
    assert (config.name, config.steps, config.turns, config.extra) == ("a", 3, (1, 5), {"anything": "goes"})
    assert config.optimizer == Optimizer(lr=1.0, betas=[0.8, 1.0], clip=2.0)
    assert isinstance(config.optimizer.lr, float) and isinstance(config.turns, tuple)


def test_file_then_flags_then_set_the_last_one_wins(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("steps = 3\n[optimizer]\nlr = 0.1\n")
    config = load_config(Run, path, [("steps", 4), ("optimizer.lr", 0.2)], ["optimizer.lr=0.3", "name=bare"])
    assert (config.steps, config.optimizer.lr, config.name) == (4, 0.3, "bare")
    assert parse_override("compile = true") == ("compile", True)


def test_unknown_keys_are_refused_with_the_valid_keys():
    with pytest.raises(ValueError, match=r"unknown config key optimizer\.lr_peak in \[optimizer\]; the keys are "
                                         r"optimizer\.lr, optimizer\.betas, optimizer\.clip"):
        build_config(Run, {"optimizer": {"lr_peak": 1}})
    with pytest.raises(ValueError, match="unknown config key stpes; the keys are name, steps"):
        load_config(Run, overrides=["stpes=3"])


@pytest.mark.parametrize("values, message", [
    ({"steps": 1.5}, "steps=1.5 must be of type int"),
    ({"steps": True}, "steps=True must be of type int"),
    ({"compile": "yes"}, "compile='yes' must be of type bool"),
    ({"turns": [1]}, r"turns=\[1\] must hold 2 values"),
    ({"optimizer": {"betas": 0.9}}, "optimizer.betas=0.9 must be a list"),
    ({"optimizer": 3}, r"\[optimizer\] must be a table of keys"),
    ({"steps": 0}, "steps=0 must be at least 1"),
    ({"optimizer": {"lr": float("nan")}}, "optimizer.lr=nan is not a finite number"),
])
def test_bad_values_are_refused_by_key(values, message):
    with pytest.raises(ValueError, match=message):
        build_config(Run, values)


def test_bad_files_and_overrides_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config file at"):
        config_values(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("steps = \n")
    with pytest.raises(ValueError, match="is not valid TOML"):
        config_values(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="must look like key=value"):
        config_values(overrides=["steps"])


def test_the_parser_gets_config_set_flags_and_an_epilog_of_every_key(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Run(), name="run")
    add_config_flag(parser, Run(), "steps", type=int, help="how many")
    help_text = parser.format_help()
    assert "how many (default 10)" in help_text
    assert 'optimizer.lr = 0.0005' in help_text and "optimizer.clip = (not set)" in help_text
    path = tmp_path / "run.toml"
    path.write_text("steps = 3\nname = \"file\"\n")
    args = parser.parse_args(["--config", str(path), "--steps", "5", "--set", "steps=6", "--set", "optimizer.lr=1"])
    assert config_settings(args, Run()) == [("steps", 5)]
    config = load_config(Run, args.config, config_settings(args, Run()), args.overrides)
    assert (config.name, config.steps, config.optimizer.lr) == ("file", 6, 1.0)
    assert load_config(Run, path, config_settings(parser.parse_args([]), Run())).steps == 3  # an unset flag: file
