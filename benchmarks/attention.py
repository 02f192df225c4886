"""Memory and time of attention backends and activation-checkpoint modes (Llama 1, section 2.4); prints JSON.

1. Attention alone, causal, T in 256 ... 4096: bytes kept for the backward pass (total, and beyond the q, k, v
   inputs that every backend keeps) and forward+backward seconds of `eager`, `memory_efficient` and `sdpa`.
2. One transformer block (dim 512, 8 heads, T 1024 by default): bytes kept and forward+backward seconds for
   each checkpoint mode, with the memory-efficient attention core in every mode.

Targets checked at the end ("met": true/false):
- memory_efficient's kept bytes grow linearly: bytes(T=4096) / bytes(T=2048) <= 2.1;
- at T=2048 they are at most 1/20 of eager's, counting what attention keeps beyond its inputs (the total,
  q, k, v included, is reported beside it);
- hand-written selective checkpointing keeps >= 30% fewer bytes than no checkpointing for <= 15% more time.

Run: python benchmarks/attention.py                 (a few minutes on 2 CPU cores)
     python benchmarks/attention.py --device cuda --dtype bfloat16
"""

import argparse
import json
import platform

import torch

from llama_course.config import ModelConfig
from llama_course.layers.attention import ATTENTION_BACKENDS
from llama_course.measurements.profiling import attention_costs, checkpoint_costs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--n-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block-dim", type=int, default=512, help="model width of the checkpointed block")
    parser.add_argument("--block-seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds, alternatives interleaved; median")
    return parser.parse_args()


def agreement_with_sdpa(device: str, dtype: torch.dtype) -> dict[str, float]:
    """Largest |memory_efficient - sdpa| of the output and the q, k, v gradients, GQA 8/2 heads, on `device`.

    A plain causal square (T = 1000) and a chunk of 100 queries after 900 cached tokens.
    """
    generator = torch.Generator().manual_seed(0)
    differences = {}
    for name, tq, tk in (("causal", 1000, 1000), ("offset", 100, 1000)):
        q, k, v = (
            torch.randn(2, heads, length, 64, generator=generator).to(device=device, dtype=dtype).requires_grad_()
            for heads, length in ((8, tq), (2, tk), (2, tk))
        )
        grad_out = torch.randn(q.shape, generator=generator).to(device=device, dtype=dtype)
        results = []
        for backend in ("memory_efficient", "sdpa"):
            out = ATTENTION_BACKENDS[backend](q, k, v, offset=tk - tq, mask=None)[0]
            results.append((out, *torch.autograd.grad(out, (q, k, v), grad_out)))
        for label, ours, reference in zip(("out", "dq", "dk", "dv"), *results, strict=True):
            differences[f"{name}_{label}"] = float((ours - reference).detach().float().abs().max())
    return differences


def check_targets(attention: list[dict], blocks: list[dict]) -> dict[str, dict]:
    def attention_row(backend: str, seq_len: int) -> dict:
        return next(row for row in attention if row["backend"] == backend and row["seq_len"] == seq_len)

    targets: dict[str, dict] = {}
    seq_lens = {row["seq_len"] for row in attention}
    if {2048, 4096} <= seq_lens:
        growth = attention_row("memory_efficient", 4096)["saved_bytes"] / attention_row("memory_efficient", 2048)[
            "saved_bytes"
        ]
        targets["memory_efficient_bytes_4096_over_2048"] = {
            "value": round(growth, 4),
            "limit": 2.1,
            "met": growth <= 2.1,
        }
    if 2048 in seq_lens:
        ours, eager = attention_row("memory_efficient", 2048), attention_row("eager", 2048)
        beyond = ours["saved_bytes_beyond_inputs"] / eager["saved_bytes_beyond_inputs"]
        targets["memory_efficient_over_eager_bytes_at_2048"] = {
            "value": round(beyond, 5),
            "limit": 1 / 20,
            "met": beyond <= 1 / 20,
            "value_counting_qkv_inputs": round(ours["saved_bytes"] / eager["saved_bytes"], 5),
        }
    by_mode = {row["mode"]: row for row in blocks}
    none, selective = by_mode["none"], by_mode["selective"]
    saved = 1 - selective["saved_bytes"] / none["saved_bytes"]
    slower = selective["seconds"] / none["seconds"] - 1
    targets["selective_checkpointing"] = {
        "bytes_saved_fraction": round(saved, 4),
        "extra_time_fraction": round(slower, 4),
        "limits": {"bytes_saved_fraction": ">= 0.30", "extra_time_fraction": "<= 0.15"},
        "met": saved >= 0.30 and slower <= 0.15,
        "full_checkpointing": {
            "bytes_saved_fraction": round(1 - by_mode["full"]["saved_bytes"] / none["saved_bytes"], 4),
            "extra_time_fraction": round(by_mode["full"]["seconds"] / none["seconds"] - 1, 4),
        },
    }
    return targets


def main() -> None:
    args = parse_args()
    dtype = getattr(torch, args.dtype)
    attention = attention_costs(
        args.seq_lens,
        batch_size=args.batch_size,
        n_heads=args.n_heads,
        n_kv_heads=args.n_heads,
        head_dim=args.head_dim,
        dtype=dtype,
        device=args.device,
        repeats=args.repeats,
    )
    config = ModelConfig(
        dim=args.block_dim,
        n_layers=1,
        n_heads=args.block_dim // args.head_dim,
        vocab_size=256,
        multiple_of=32,
        max_seq_len=args.block_seq_len,
        attention_backend="memory_efficient",
    )
    blocks = checkpoint_costs(
        config,
        seq_len=args.block_seq_len,
        batch_size=args.batch_size,
        dtype=dtype,
        device=args.device,
        repeats=args.repeats,
    )
    report = {
        "device": args.device if args.device != "cuda" else torch.cuda.get_device_name(),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "attention": {"batch_size": args.batch_size, "n_heads": args.n_heads, "head_dim": args.head_dim,
                      "rows": attention},
        "checkpointing": {"dim": config.dim, "n_heads": config.n_heads, "hidden_dim": config.hidden_dim,
                          "seq_len": args.block_seq_len, "rows": blocks},
        "max_abs_difference_to_sdpa": agreement_with_sdpa(args.device, dtype),
        "targets": check_targets(attention, blocks),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
