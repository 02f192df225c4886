"""`llama-course presets`: every model preset with its dimensions and exact parameter count."""

import argparse

from llama_course.config import PRESETS, count_parameters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`llama-course presets` takes no flags."""


def run(args: argparse.Namespace) -> None:
    header = ("preset", "dim", "layers", "heads", "kv", "ffn", "context", "parameters")
    print("{:<12} {:>5} {:>6} {:>5} {:>3} {:>6} {:>7} {:>15}".format(*header))
    for name, config in PRESETS.items():
        print(f"{name:<12} {config.dim:>5} {config.n_layers:>6} {config.n_heads:>5} {config.n_kv_heads:>3} "
              f"{config.hidden_dim:>6} {config.max_seq_len:>7} {count_parameters(config):>15,}")
