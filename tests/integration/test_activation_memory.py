"""The Llama block's activation-memory formula against the bytes a real block keeps, without and with TP / SP."""

import dataclasses
import json

import pytest
import torch
import torch.multiprocessing as mp
from local_processes import free_port, set_process_env

from llama_course.config import PRESETS, count_parameters
from llama_course.measurements.activation_memory import (
    SCHEMES,
    ScaleOutPlan,
    communication_per_step,
    korthikanti_activation_bytes,
    llama_activation_bytes,
    llama_activation_terms,
    main,
    measure_block_activation_bytes,
    per_gpu_memory,
)

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


def test_llama_65b_on_2048_gpus_fsdp_against_tensor_and_sequence_parallelism():
    config, n = PRESETS["llama1-65b"], count_parameters(PRESETS["llama1-65b"])
    fsdp = ScaleOutPlan("fsdp", tensor_parallel=1, data_parallel=2048, shard_weights=True, sequence_parallel=False)
    megatron = ScaleOutPlan("tp8", tensor_parallel=8, data_parallel=256, shard_weights=False)
    memory = per_gpu_memory(config, fsdp, 2048)
    assert memory["training state"] == pytest.approx(16 * n / 2048)
    assert memory["gathered weights"] == pytest.approx(2 * 2 * (n - 2 * 32000 * 8192 - 8192) / 80)  # 2 bf16 blocks
    assert memory["activations"] == pytest.approx(80 * llama_activation_bytes(config, 2048, 1))
    tp_memory = per_gpu_memory(config, megatron, 2048)
    assert tp_memory["training state"] == pytest.approx(6 * n / 8 + 12 * n / 2048)
    assert tp_memory["activations"] < memory["activations"] / 4
    # one sequence per GPU per step (2,048 of 2,048 tokens): FSDP moves 8 bytes per parameter over the network
    assert communication_per_step(config, fsdp, 2048, 2048) == pytest.approx(
        {"tensor parallel": 0.0, "data parallel": 8 * n * 2047 / 2048})
    traffic = communication_per_step(config, megatron, 2048, 2048)
    assert traffic["data parallel"] == pytest.approx(6 * n / 8 * 255 / 256)
    assert traffic["tensor parallel"] == pytest.approx(8 * (8 * 80 + 4) * 7 / 8 * 2 * 2048 * 8192)
    with pytest.raises(ValueError, match="global_batch=100 is not a multiple of data_parallel x micro_batch = 256"):
        communication_per_step(config, megatron, 2048, 100)
