"""`llama-course ablate`: does each Llama choice help? Architecture ablations of chapters 2 to 5.

    llama-course ablate norms ffn positions attention --seeds 0 1 2 --results-dir llama_course/assets/ablations

trains every variant of each named sweep (see `llama_course.experiments.ablation.SWEEPS`) for every seed on
the same toy stories in the same order, and writes one results file per sweep (NAME.json) with each
variant's validation loss and its difference from the Llama choice, with 95% intervals over seeds and
validation batches, and the step time (chapter 5: also decode tokens/s and KV-cache bytes). Every
(variant, seed) run is kept under `--output-dir` as it finishes: rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from llama_course.experiments.ablation import RESULTS_DIR, SWEEPS, run_sweep, summary_lines


def _describe_sweeps() -> str:
    lines = [f"the shipped results: llama-course ablate {' '.join(SWEEPS)} (writes llama_course/assets/ablations/"
             "NAME.json; rerun the same command to resume)", "",
             "sweeps, each compared with the Llama choice (its baseline):"]
    for name, sweep in SWEEPS.items():
        settings = sweep.settings
        variants = "; ".join(variant.name for variant in sweep.variants)
        shipped = RESULTS_DIR / f"{name}.json"
        if shipped.is_file():
            variants += f" (the shipped run took {json.loads(shipped.read_text())['seconds']} s)"
        lines.append(f"  {name} (chapter {sweep.chapter}, {settings.steps} steps of {settings.micro_batch_size} x "
                     f"{settings.block_size} tokens, baseline {sweep.baseline}): {variants}")
    lines.append("every sweep trains a 2-layer, 32-wide model (about 91k parameters) on the toy stories; the shipped "
                 "runs went three sweeps at a time at low priority on a shared 2-core CPU")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _describe_sweeps()
    parser.add_argument("sweeps", nargs="+", choices=sorted(SWEEPS), metavar="SWEEP",
                        help=f"which sweeps to run: {', '.join(SWEEPS)} (chapters 2, 3, 4, 5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (initialisation, data order)")
    parser.add_argument("--steps", type=int, help="training steps of every run (default: each sweep's own)")
    parser.add_argument("--output-dir", default="runs/ablation", help="run directory (resumable: one per run)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where NAME.json is written (default: the shipped results)")


def run(args: argparse.Namespace) -> None:
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps={args.steps} must be a positive number of steps")
    for name in args.sweeps:
        sweep = SWEEPS[name]
        if args.steps is not None:
            sweep = dataclasses.replace(sweep, settings=dataclasses.replace(sweep.settings, steps=args.steps))
        start = time.time()
        results = run_sweep(sweep, args.seeds, args.output_dir)
        print("\n".join(summary_lines(results)))
        steps = results["timing"]["step_seconds"]
        print("ms per step: " + ", ".join(f"{variant} {1e3 * seconds:.1f}" for variant, seconds in steps.items()))
        results["seconds"] = round(time.time() - start)
        print(f"{name}: {results['seconds']} s")
        args.results_dir.mkdir(parents=True, exist_ok=True)
        (args.results_dir / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
