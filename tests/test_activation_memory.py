"""The Llama block's activation-memory formula against the bytes a real block keeps, without and with TP / SP."""

import dataclasses
import json

import pytest
import torch
import torch.multiprocessing as mp
from local_processes import free_port, set_process_env

from llama_course.activation_memory import (
    SCHEMES,
    korthikanti_activation_bytes,
    llama_activation_bytes,
    llama_activation_terms,
    main,
    measure_block_activation_bytes,
)
from llama_course.config import PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = PRESETS["tiny"]  # dim 128, 4 heads, 2 KV heads (GQA), SwiGLU hidden 352
MHA = dataclasses.replace(TINY, n_kv_heads=4, dim=96, n_heads=4)


@pytest.mark.parametrize("config", [TINY, MHA], ids=["gqa", "mha"])
@pytest.mark.parametrize(("seq_len", "batch_size"), [(64, 1), (128, 3)])
def test_formula_matches_the_bytes_one_block_keeps(config, seq_len, batch_size):
    measured = measure_block_activation_bytes(config, seq_len, batch_size)
    formula = llama_activation_bytes(config, seq_len, batch_size, dtype=torch.float32)
    assert measured == pytest.approx(formula, rel=0.02)


def _measure_on_two(rank: int, port: int, output: str) -> None:
    set_process_env(rank, 2, port)
    main(["--output", output, "--seq-len", "64", "--batch-size", "2"])


@pytest.fixture(scope="module")
def two_rank_report(tmp_path_factory):
    output = tmp_path_factory.mktemp("activations")
    mp.spawn(_measure_on_two, args=(free_port(), str(output)), nprocs=2, join=True)
    return [json.loads((output / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_formula_matches_each_rank_under_tensor_and_sequence_parallelism(two_rank_report, scheme):
    for report in two_rank_report:
        assert report[scheme]["measured"] == pytest.approx(report[scheme]["formula"], rel=0.02)


def test_tensor_and_sequence_parallelism_shrink_what_a_rank_keeps(two_rank_report):
    measured = {scheme: two_rank_report[0][scheme]["measured"] for scheme in SCHEMES}
    assert measured["tp+sp"] < measured["tp"] < measured["none"]
    # SP under DTensor keeps the gathered inputs of wq/wk/wv and w1/w3 whole: 2sbh on top of the rest / 2
    expected = llama_activation_bytes(TINY, 64, 2, dtype=torch.float32, tensor_parallel=2, sequence_parallel=True,
                                      gathered_inputs_kept=False) + 2 * 64 * 2 * TINY.dim * 4 / 2
    assert measured["tp+sp"] == pytest.approx(expected, rel=0.02)


def test_megatron_sequence_parallelism_divides_all_but_the_rotary_tables():
    full = llama_activation_terms(TINY, 256, 4, dtype=torch.bfloat16)
    split = llama_activation_terms(TINY, 256, 4, dtype=torch.bfloat16, tensor_parallel=2, sequence_parallel=True,
                                   gathered_inputs_kept=False)
    for whole, part in zip(full, split, strict=True):
        assert part.bytes == (whole.bytes if part.name.startswith("rotary") else whole.bytes / 2), part.name


def test_korthikanti_formulas_are_those_of_the_paper():
    s, b, h, a, t = 2048, 1, 8192, 64, 8
    assert korthikanti_activation_bytes(s, b, h, a) == s * b * h * (34 + 5 * a * s / h)
    tensor_only = s * b * h * (10 + 24 / t + 5 * a * s / (h * t))
    assert korthikanti_activation_bytes(s, b, h, a, tensor_parallel=t) == pytest.approx(tensor_only)
    assert korthikanti_activation_bytes(s, b, h, a, tensor_parallel=t, sequence_parallel=True) == pytest.approx(
        s * b * h * (34 + 5 * a * s / h) / t)
    assert korthikanti_activation_bytes(s, b, h, a, tensor_parallel=t, sequence_parallel=True,
                                        selective_recompute=True) == pytest.approx(34 * s * b * h / t)


def test_a_sequence_that_does_not_split_is_refused():
    with pytest.raises(ValueError, match="seq_len=31 is not divisible by tensor_parallel=2"):
        llama_activation_terms(TINY, 31, 1, tensor_parallel=2, sequence_parallel=True)
