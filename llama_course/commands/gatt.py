"""`llama-course gatt`: Ghost Attention against the SFT model and a control (chapter 14).

    llama-course gatt --seeds 0 1 2 --results llama_course/assets/gatt_results.json

builds each seed's GAtt data from the shipped SFT model (answers kept by the adherence checker), fine-tunes
GAtt and the control, measures them and the SFT model (recall by turn on held-out dialogues, single-turn
helpfulness, attention to the system message), and writes the results with 95% intervals. Every
measurement is kept under `--output-dir` as it finishes: rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from llama_course.alignment.gatt import ANSWER_SOURCES
from llama_course.alignment.sft import export_model, load_base_model
from llama_course.config_files import add_config_arguments, add_config_flag, config_settings, load_config
from llama_course.experiments.gatt import MODEL_FOLDER, GAttConfig, run_experiment


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `llama-course gatt` flags (defaults: `GAttConfig`)."""
    defaults = GAttConfig()
    add_config_arguments(parser, defaults, name="GAttConfig")
    add_config_flag(parser, defaults, "base", help="model to start from (see load_base_model)")
    parser.add_argument("--output-dir", default="runs/gatt", help="run directory (resumable: one folder per seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="experiment seeds (data and training)")
    add_config_flag(parser, defaults, "dialogues", type=int, help="training dialogues per seed, before rejection")
    add_config_flag(parser, defaults, "train_turns", type=int, nargs=2, metavar=("LOW", "HIGH"),
                    help="user turns of each training dialogue")
    add_config_flag(parser, defaults, "answers", choices=ANSWER_SOURCES,
                    help="rejection: sampled, kept when the adherence checker passes them; model: greedy, as they "
                         "come; reference: the toy world's")
    add_config_flag(parser, defaults, "samples_per_turn", type=int, help="answers sampled per turn for the rejection "
                    "step")
    add_config_flag(parser, defaults, "temperature", type=float, help="of those samples")
    add_config_flag(parser, defaults, "sft_mix", type=int,
                    help="conversations of the SFT mix replayed in both fine-tunings (0: none)")
    add_config_flag(parser, defaults, "epochs", type=float, help="passes over GAtt's blocks")
    add_config_flag(parser, defaults, "lr", type=float, help="peak learning rate (cosine to 10%%)")
    add_config_flag(parser, defaults, "batch_size", type=int, help="blocks per step")
    add_config_flag(parser, defaults, "eval_dialogues", type=int, help="held-out dialogues for recall")
    add_config_flag(parser, defaults, "eval_turns", type=int, help="user turns of each")
    add_config_flag(parser, defaults, "recall_turns", type=int, nargs=2, metavar=("LOW", "HIGH"),
                    help="turns the headline recall averages")
    add_config_flag(parser, defaults, "eval_tasks", type=int, help="held-out single-turn tasks for the helpfulness "
                    "cost")
    add_config_flag(parser, defaults, "attention_dialogues", type=int,
                    help="reference dialogues for the attention picture")
    add_config_flag(parser, defaults, "max_new_tokens", type=int, help="answer length limit")
    parser.add_argument("--results", type=Path, help="write the results (with 95%% intervals) as JSON here")
    parser.add_argument("--export", type=Path, metavar="FOLDER",
                        help="write the first seed's GAtt model into FOLDER (weights, config.json with its card)")


def config_from_args(args: argparse.Namespace) -> GAttConfig:
    """The `GAttConfig` of parsed flags: the config file, then the flags, then --set (the last one wins)."""
    return load_config(GAttConfig, args.config, config_settings(args, GAttConfig()), args.overrides)


def run(args: argparse.Namespace) -> None:
    gatt(config_from_args(args), args.seeds, args.output_dir, results=args.results, export=args.export)


def gatt(config: GAttConfig, seeds: list[int], output_dir: str, *, results: Path | None = None,
         export: Path | None = None) -> dict:
    """Run (or resume) the GAtt experiment for `seeds` under `output_dir` and print its intervals; write the results
    to `results` and the first seed's GAtt model into `export` if given. Returns the results."""
    start = time.time()
    measured, _, _ = run_experiment(config, seeds, output_dir)
    summary = measured["summary"]
    low, high = config.recall_turns
    for kind in ("recall", "helpfulness"):
        for label, group in (("", summary[kind]["mean"]), ("difference ", summary[kind]["difference"])):
            for name, interval in group.items():
                print(f"{kind} {label}{name} (turns {low}-{high})" if kind == "recall" else f"{kind} {label}{name}",
                      f"{interval['rate']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]")
    print(f"{time.time() - start:.0f} s")
    if results is not None:
        results.write_text(json.dumps(measured, indent=1) + "\n")
    if export is not None:
        model, _ = load_base_model(str(Path(output_dir) / f"seed-{seeds[0]}" / "gatt" / MODEL_FOLDER))
        export_model(model, export, {"gatt_config": config.to_dict(), "seed": seeds[0],
                                     "recall_by_turn": measured["gatt"]["recall_by_turn"]})
    return measured
