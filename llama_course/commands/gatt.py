"""`llama-course gatt`: Ghost Attention against the SFT model and a control (chapter 14).

    llama-course gatt --seeds 0 1 2 --results llama_course/assets/gatt_results.json

builds each seed's GAtt data from the shipped SFT model (answers kept by the adherence checker), fine-tunes
GAtt and the control, measures them and the SFT model (recall by turn on held-out dialogues, single-turn
helpfulness, attention to the system message), and writes the results with 95% intervals. Every
measurement is kept under `--output-dir` as it finishes: rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from llama_course.alignment.gatt import ANSWER_SOURCES
from llama_course.alignment.sft import export_model, load_base_model
from llama_course.experiments.gatt import MODEL_FOLDER, GAttConfig, run_experiment


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = GAttConfig()
    parser.add_argument("--base", default=defaults.base, help="model to start from (see load_base_model)")
    parser.add_argument("--output-dir", default="runs/gatt", help="run directory (resumable: one folder per seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="experiment seeds (data and training)")
    parser.add_argument("--dialogues", type=int, default=defaults.dialogues,
                        help="training dialogues per seed, before rejection")
    parser.add_argument("--train-turns", type=int, nargs=2, default=defaults.train_turns, metavar=("LOW", "HIGH"),
                        help="user turns of each training dialogue")
    parser.add_argument("--answers", choices=ANSWER_SOURCES, default=defaults.answers,
                        help="rejection: sampled, kept when the adherence checker passes them; model: greedy, as "
                             "they come; reference: the toy world's")
    parser.add_argument("--samples-per-turn", type=int, default=defaults.samples_per_turn,
                        help="answers sampled per turn for the rejection step")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="of those samples")
    parser.add_argument("--sft-mix", type=int, default=defaults.sft_mix,
                        help="conversations of the SFT mix replayed in both fine-tunings (0: none)")
    parser.add_argument("--epochs", type=float, default=defaults.epochs, help="passes over GAtt's blocks")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (cosine to 10%%)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="blocks per step")
    parser.add_argument("--eval-dialogues", type=int, default=defaults.eval_dialogues,
                        help="held-out dialogues for recall")
    parser.add_argument("--eval-turns", type=int, default=defaults.eval_turns, help="user turns of each")
    parser.add_argument("--recall-turns", type=int, nargs=2, default=defaults.recall_turns, metavar=("LOW", "HIGH"),
                        help="turns the headline recall averages")
    parser.add_argument("--eval-tasks", type=int, default=defaults.eval_tasks,
                        help="held-out single-turn tasks for the helpfulness cost")
    parser.add_argument("--attention-dialogues", type=int, default=defaults.attention_dialogues,
                        help="reference dialogues for the attention picture")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="answer length limit")
    parser.add_argument("--results", type=Path, help="write the results (with 95%% intervals) as JSON here")
    parser.add_argument("--export", type=Path, metavar="FOLDER",
                        help="write the first seed's GAtt model into FOLDER (weights, config.json with its card)")


def run(args: argparse.Namespace) -> None:
    fields = {field.name for field in dataclasses.fields(GAttConfig)}
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in vars(args).items()
              if key in fields}
    config = GAttConfig(**values)
    start = time.time()
    results, _, _ = run_experiment(config, args.seeds, args.output_dir)
    summary = results["summary"]
    low, high = config.recall_turns
    for kind in ("recall", "helpfulness"):
        for label, group in (("", summary[kind]["mean"]), ("difference ", summary[kind]["difference"])):
            for name, interval in group.items():
                print(f"{kind} {label}{name} (turns {low}-{high})" if kind == "recall" else f"{kind} {label}{name}",
                      f"{interval['rate']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]")
    print(f"{time.time() - start:.0f} s")
    if args.results is not None:
        args.results.write_text(json.dumps(results, indent=1) + "\n")
    if args.export is not None:
        model, _ = load_base_model(str(Path(args.output_dir) / f"seed-{args.seeds[0]}" / "gatt" / MODEL_FOLDER))
        export_model(model, args.export, {"gatt_config": config.to_dict(), "seed": args.seeds[0],
                                          "recall_by_turn": results["gatt"]["recall_by_turn"]})
