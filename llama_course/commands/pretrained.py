"""`llama-course pretrained`: export a pretraining run as a shipped model folder, rescore one, or consolidate a
sharded checkpoint (`pretrained.py` holds the work).

    llama-course pretrained export runs/base-tiny llama_course/assets/base
    llama-course pretrained rescore llama_course/assets/base --temperatures 1.0 0.8 0.6
"""

import argparse
from pathlib import Path

from llama_course.arguments import bounded_number
from llama_course.pretrained import consolidate_sharded, export_pretrained, rescore_pretrained


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="action", required=True)
    consolidate = commands.add_parser(
        "consolidate", help="rewrite a sharded (FSDP) checkpoint as one safetensors file that is safe to share")
    consolidate.add_argument("checkpoint", type=Path, help="a sharded checkpoint directory, or a run directory")
    consolidate.add_argument("destination", type=Path, help="a new folder (model.safetensors + trainer_state.json)")
    consolidate.add_argument("--trust-pickle", action="store_true",
                             help="confirm that you wrote the checkpoint: its .metadata is a pickle that can run code")
    export = commands.add_parser("export", help="copy a pretraining run's final weights into a shipped folder")
    export.add_argument("run_dir", type=Path, help="the pretraining run's output directory")
    export.add_argument("destination", type=Path, help="e.g. llama_course/assets/base")
    export.add_argument("--samples", type=bounded_number(int, 1), default=256,
                        help="stories sampled for the grammar score")
    export.add_argument("--seed", type=int, default=0, help="sampling seed")
    rescore = commands.add_parser("rescore", help="grammar score of an exported folder at several temperatures")
    rescore.add_argument("folder", type=Path, help="e.g. llama_course/assets/base")
    rescore.add_argument("--temperatures", type=bounded_number(float, 0), nargs="+", default=[1.0, 0.8, 0.6])
    rescore.add_argument("--samples", type=bounded_number(int, 1), default=128, help="stories sampled per temperature")
    rescore.add_argument("--seed", type=int, default=0, help="sampling seed")


def run(args: argparse.Namespace) -> None:
    if args.action == "consolidate":
        if not args.trust_pickle:
            raise ValueError(f"reading {str(args.checkpoint)!r} unpickles its Distributed Checkpoint metadata, which "
                             "can run code: pass --trust-pickle if you wrote it yourself")
        print(f"wrote {consolidate_sharded(args.checkpoint, args.destination)}: model.safetensors and "
              "trainer_state.json, loadable with --checkpoint / load_trained_model")
        return
    if args.action == "rescore":
        for temperature, score in rescore_pretrained(args.folder, args.temperatures, samples=args.samples,
                                                     seed=args.seed).items():
            print(f"temperature {temperature}: grammar score {score['fraction']:.3f} "
                  f"({score['valid_sentences']}/{score['sentences']} sentences of {score['stories']} stories)")
        return
    card = export_pretrained(args.run_dir, args.destination, samples=args.samples, seed=args.seed)["card"]
    score = card["grammar_score"]
    print(f"exported step {card['steps']} ({card['training_tokens']:,} tokens) to {args.destination}: "
          f"validation loss {card['validation_loss']}, grammar score {score['fraction']:.3f} "
          f"({score['valid_sentences']}/{score['sentences']} sentences of {score['stories']} samples)")

