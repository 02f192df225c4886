"""`llama-course build-tokenizer`: retrain the toy world's tokenizer (`toyworld.build_tokenizer` holds the recipe)."""

import argparse
from pathlib import Path

from llama_course.toyworld.assets import TOY_TOKENIZER_PATH, TOY_VOCAB_SIZE
from llama_course.toyworld.build_tokenizer import build_toy_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab-size", type=int, default=TOY_VOCAB_SIZE, help="pieces in the vocabulary")
    parser.add_argument("--output", type=Path, default=TOY_TOKENIZER_PATH, help="where to write tokenizer.model")


def run(args: argparse.Namespace) -> None:
    tokenizer = build_toy_tokenizer(args.output, args.vocab_size)
    print(f"wrote {args.output} ({tokenizer.vocab_size} pieces, {args.output.stat().st_size} bytes)")
