"""The `llama-course` command line: dispatches each subcommand to its module in `llama_course/commands/`.

Bad input is never a traceback: an expected failure (a bad value, a missing or damaged file, no network, a
training run that diverged) is one line naming the problem and the fix, exit status 2; Ctrl-C during training
saves a checkpoint and exits with 128 + the signal number. Anything else is a bug: one line too, exit status 1,
and `--debug` shows its traceback (as it does for expected failures).
"""

import argparse
import importlib
import math
import os
import sys
from collections.abc import Callable, Sequence

# Every subcommand: (name, its module in `commands/` with `add_arguments(parser)` and `run(args)`, one-line help).
SUBCOMMAND_MODULES = [
    ("presets", "llama_course.commands.presets", "print every model preset with its exact parameter count"),
    ("build-tokenizer", "llama_course.commands.build_tokenizer", "retrain the toy world's shipped tokenizer"),
    ("convert", "llama_course.commands.convert", "convert a checkpoint between Meta's and Hugging Face's layouts"),
    ("grade", "llama_course.commands.grade", "grade an exercise notebook: run it, test its functions, print the score"),
    ("sync-notebooks", "llama_course.commands.sync_notebooks",
     "run chapters and write their paired .ipynb (checked outputs only)"),
    ("pretrain", "llama_course.commands.pretrain", "pretrain a Llama on a corpus (config file + flags; resumes)"),
    ("pretrained", "llama_course.commands.pretrained", "export a training run as a shipped checkpoint, or rescore one"),
    ("scaling", "llama_course.commands.scaling",
     "Llama 1's thesis: smaller models trained longer, several sizes x budgets"),
    ("sft", "llama_course.commands.sft", "supervised fine-tuning of the base model on toy-world conversations"),
    ("train-rm", "llama_course.commands.train_rm",
     "train a helpfulness or safety reward model with the margin ranking loss (--margin-study: no/small/large)"),
    ("rejection-sample", "llama_course.commands.rejection_sample",
     "rejection sampling fine-tuning: best-of-K by the RM, SFT on the winners"),
    ("ppo", "llama_course.commands.ppo",
     "RLHF with PPO: KL-penalised, safety-first reward from the two RMs; data-parallel under torchrun"),
    ("gatt", "llama_course.commands.gatt",
     "Ghost Attention: fine-tune on last-turn samples, measure constraint recall by turn"),
    ("ablate", "llama_course.commands.ablate",
     "architecture ablations (chapters 2-5): Llama's choices against the alternatives, over seeds; resumable"),
    ("rlhf", "llama_course.commands.rlhf",
     "iterative RLHF as Llama 2 ran it: on-policy preference rounds V1..Vk, RMs retrained, RS then PPO; resumable"),
    ("safety", "llama_course.commands.safety",
     "safety (chapter 16): safety data scaling and false refusal; context distillation (distill)"),
    ("evaluate", "llama_course.commands.evaluate",
     "compare models side by side as Llama 2 did: win/tie/loss with intervals, rater agreement, safety violations"),
    ("reproduce", "llama_course.commands.reproduce",
     "the whole course from nothing (tokenizer to evaluation), resumable, with a report of every headline number"),
    ("chat", "llama_course.commands.chat", "chat with a model in the terminal (Llama 2-Chat format, streamed)"),
]


def _run_module(module: str) -> Callable[[argparse.Namespace], None]:
    return lambda args: importlib.import_module(module).run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-course", description="Llama 1 and Llama 2 rebuilt piece by piece: the course's command line."
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also after COMMAND)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers: dict[str, Callable[[argparse.Namespace], None]] = {}
    for name, module, help in SUBCOMMAND_MODULES:
        handlers[name] = _run_module(module)
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show an error's traceback")
        importlib.import_module(module).add_arguments(sub)
    parser.set_defaults(handlers=handlers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `llama-course ARGV`; returns the exit status (see the module docstring)."""
    import signal

    from llama_course.training.trainer import NonFiniteLossError, TrainingInterrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"llama-course {args.command}"
    for flag, value in vars(args).items():  # every command: NaN and infinity are never meaningful flag values
        values = value if isinstance(value, list) else [value]
        if any(isinstance(item, float) and not math.isfinite(item) for item in values):
            print(f"{name}: error: --{flag.replace('_', '-')}={value} is not a finite number", file=sys.stderr)
            return 2
    try:
        args.handlers[args.command](args)
    except TrainingInterrupted as stop:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops; one says so
            print(f"{name}: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{name}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except (ValueError, OSError, NonFiniteLossError) as error:  # OSError: missing files, no network, disk full
        if args.debug:
            raise
        print(f"{name}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if args.debug:
            raise
        print(f"{name}: internal error (a bug; rerun with --debug for the traceback and report it): "
              f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
