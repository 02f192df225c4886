"""Counting the bytes kept for the backward pass, and the cost sweeps of chapter 6."""

import dataclasses

import torch
from torch.utils.checkpoint import checkpoint

from llama_course.config import ModelConfig
from llama_course.measurements.profiling import (
    attention_costs,
    bytes_kept_for_backward,
    checkpoint_costs,
    interleaved_seconds,
    timing_summary,
)


def test_counts_saved_tensors_once_per_storage():
    x = torch.randn(100, requires_grad=True)
    assert bytes_kept_for_backward(lambda: x * 3).total == 0  # a constant factor needs nothing saved
    # exp saves its output; sin saves its input x twice (two calls): one storage of 400 bytes each
    kept = bytes_kept_for_backward(lambda: x.exp() + x.sin() + x.sin(), inputs=[x])
    assert (kept.total, kept.inputs, kept.beyond_inputs) == (800, 400, 400)


def test_ignored_tensors_and_unsaved_outputs_are_not_counted():
    weight = torch.randn(8, 4, requires_grad=True)
    x = torch.randn(3, 4)
    # x @ W^T saves x (48 bytes) and W (ignored); the output is returned, not saved
    assert bytes_kept_for_backward(lambda: x @ weight.T, ignore=[weight]).total == 48


def test_counts_what_checkpointing_keeps_outside_the_autograd_graph():
    x = torch.randn(50, requires_grad=True)
    assert bytes_kept_for_backward(lambda: x.exp().exp()).total == 400  # both outputs saved by exp
    # full checkpointing keeps the input only
    assert bytes_kept_for_backward(lambda: checkpoint(lambda t: t.exp().exp(), x, use_reentrant=False)).total == 200


def test_attention_costs_rows_grow_linearly_for_memory_efficient():
    rows = attention_costs([32, 64], backends=("eager", "memory_efficient"), n_heads=2, n_kv_heads=1, head_dim=8,
                           repeats=1)  # fmt: skip
    kept = {(row["backend"], row["seq_len"]): row["saved_bytes"] for row in rows}
    # memory_efficient keeps q, k, v, the output and the log-sum-exp: (2 + 1 + 1 + 2) * T * 8 + 2 * T floats
    assert kept["memory_efficient", 32] == 4 * (6 * 32 * 8 + 2 * 32)
    assert kept["memory_efficient", 64] == 2 * kept["memory_efficient", 32]
    assert kept["eager", 64] > 3 * kept["eager", 32]  # the (T, T) weights


def test_checkpoint_costs_reports_every_mode():
    config = ModelConfig(dim=16, n_layers=1, n_heads=2, vocab_size=11, multiple_of=8, max_seq_len=32)
    rows = checkpoint_costs(dataclasses.replace(config, attention_backend="memory_efficient"), seq_len=8, repeats=1)
    assert [row["mode"] for row in rows] == ["none", "selective", "selective-policy", "full"]
    assert rows[-1]["saved_bytes"] == 4 * 8 * 16 + 2 * 4 * 8 * 4  # full: the block input and the RoPE tables


def test_interleaved_seconds_alternates_the_steps_and_drops_the_warmup():
    calls = []
    seconds = interleaved_seconds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3,
                                  warmup=1)
    assert calls == ["a", "b"] * 4
    assert {name: len(times) for name, times in seconds.items()} == {"a": 3, "b": 3}


def test_timing_summary_gives_median_and_spread():
    assert timing_summary([2.0, 1.0, 4.0]) == {"median_s": 2.0, "min_s": 1.0, "max_s": 4.0, "spread": 1.5,
                                               "rounds": 3}
