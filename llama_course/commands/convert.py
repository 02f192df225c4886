"""`llama-course convert`: move a checkpoint between Meta's release layout and Hugging Face's folder layout."""

import argparse

import torch

from llama_course.arguments import bounded_number
from llama_course.interop.checkpoints import (
    load_hf_checkpoint,
    load_meta_checkpoint,
    save_hf_checkpoint,
    save_meta_checkpoint,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="checkpoint folder to read")
    parser.add_argument("destination", help="checkpoint folder to write (written atomically)")
    parser.add_argument("--from", dest="source_format", choices=["hf", "meta"], required=True)
    parser.add_argument("--to", dest="destination_format", choices=["hf", "meta"], required=True)
    parser.add_argument("--num-shards", type=bounded_number(int, 1), default=1,
                        help="model-parallel shards when writing Meta's layout")
    parser.add_argument("--vocab-size", type=bounded_number(int, 1),
                        help="Meta only: when params.json says -1 (default: from weights)")
    parser.add_argument("--max-seq-len", type=bounded_number(int, 1),
                        help="Meta only: 2048 for Llama 1, 4096 for Llama 2")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast the weights (default: keep stored dtype)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing destination folder")


def run(args: argparse.Namespace) -> None:
    dtype = DTYPES[args.dtype] if args.dtype else None
    if args.source_format == "hf":
        model = load_hf_checkpoint(args.source, dtype=dtype)
    else:
        model = load_meta_checkpoint(args.source, vocab_size=args.vocab_size, max_seq_len=args.max_seq_len,
                                     dtype=dtype)
    if args.destination_format == "hf":
        save_hf_checkpoint(model, args.destination, overwrite=args.overwrite)
    else:
        save_meta_checkpoint(model, args.destination, num_shards=args.num_shards, overwrite=args.overwrite)
    print(f"wrote {args.destination} ({args.destination_format} layout, {len(model.layers)} layers)")
