"""The GPU throughput benchmark (run in its CPU smoke mode) and the trainer paths GPU throughput depends on:
AdamW's fused kernel where it applies, and a step that reads nothing back from the device."""

import importlib
import json
import math
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from llama_course.config import PRESETS, ModelConfig, count_parameters
from llama_course.model import Llama
from llama_course.training.batches import TensorBlocks
from llama_course.training.optim import AdamWConfig, build_optimizer, can_fuse_adamw
from llama_course.training.trainer import LossSum, NonFiniteLossError, Trainer, TrainerConfig, causal_lm_loss

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16, max_seq_len=32)
SMOKE_VARIANTS = ["ours", "ours+fsdp", "ours+full", "transformers"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smoke_report() -> dict:
    command = [sys.executable, str(BENCHMARKS / "gpu_throughput.py"), "--device", "cpu", "--preset", "tiny",
               "--seq", "128", "--batch", "2", "--rounds", "2", "--warmup", "1",
               "--variants", ",".join(SMOKE_VARIANTS)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def benchmark():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("gpu_throughput")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_smoke_run_reports_every_variant_with_consistent_numbers(smoke_report):
    report = smoke_report
    config = PRESETS["tiny"]
    assert report["preset"] == "tiny" and report["compute"] == "float32" and report["seq_len"] == 128
    assert report["parameters"] == count_parameters(config) == 1_000_576
    # 6N + 12 L H hd T, N without the 1024 x 128 embedding
    assert report["flops_per_token"] == 6 * (1_000_576 - 1024 * 128) + 12 * 4 * 4 * 32 * 128
    assert report["peak_source"].startswith("measured") and report["peak_flops"] == report["measured_matmul_flops"]
    assert list(report["variants"]) == SMOKE_VARIANTS
    tokens_per_step = 2 * 128
    assert report["tokens_per_step"] == tokens_per_step
    for name, result in report["variants"].items():
        assert result["step_min_s"] <= result["step_median_s"] <= result["step_max_s"], name
        spread = (result["step_max_s"] - result["step_min_s"]) / result["step_median_s"]
        assert result["step_spread"] == pytest.approx(spread, abs=1e-4), name
        assert result["tokens_per_s"] == pytest.approx(tokens_per_step / result["step_median_s"], abs=0.01), name
        mfu = result["tokens_per_s"] * report["flops_per_token"] / report["peak_flops"]
        assert 0 < result["mfu"] < 1 and result["mfu"] == pytest.approx(mfu, rel=1e-3, abs=1e-6), name
        assert result["step_memory_gib"] is None  # measured on CUDA only
    ratio = report["variants"]["transformers"]["step_median_s"] / report["variants"]["ours"]["step_median_s"]
    assert report["speedup_vs_transformers"] == {"ours": pytest.approx(ratio, abs=1e-4)}
    assert report["best_ours"] == max(SMOKE_VARIANTS[:3], key=lambda n: report["variants"][n]["tokens_per_s"])


def test_variants_parse_and_bad_ones_are_refused_by_name(benchmark):
    assert benchmark.parse_variant("ours+compile+full") == benchmark.Variant("ours", True, False, "full")
    assert benchmark.parse_variant("transformers+fsdp") == benchmark.Variant("transformers", False, True, "none")
    for name, message in [("gpt+compile", "start it with one of"), ("ours+sparkle", r"unknown options \['sparkle'\]"),
                          ("ours+full+selective", "two checkpointing modes"), ("ours+compile+compile", "repeats"),
                          ("transformers+selective", "use transformers\\+full")]:
        with pytest.raises(ValueError, match=message):
            benchmark.parse_variant(name)


@pytest.mark.parametrize(("device_name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA H100 NVL", None), ("NVIDIA H200 NVL", None), ("NVIDIA GH200 480GB", None), ("NVIDIA L4", None),
])
def test_datasheet_peaks_of_known_cards_and_none_for_others(benchmark, device_name, peak):
    known = benchmark.datasheet_peak(device_name)
    assert (known[0] if known else None) == peak


def tiny_blocks(n: int = 64, seq: int = 16) -> TensorBlocks:
    tokens = torch.randint(0, TINY.vocab_size, (n, seq + 1), generator=torch.Generator().manual_seed(0))
    return TensorBlocks(input_ids=tokens[:, :-1], labels=tokens[:, 1:])


def tiny_trainer(output_dir, loss_fn=causal_lm_loss, eval_data=None, **overrides) -> Trainer:
    values = dict(steps=7, micro_batch_size=4, grad_accum_steps=2, lr=1e-2, warmup_steps=2, progress=False,
                  log_every=3, eval_every=0, checkpoint_every=0, device="cpu")
    torch.manual_seed(0)
    return Trainer(Llama(TINY), tiny_blocks(), TrainerConfig(**(values | overrides)), output_dir, loss_fn=loss_fn,
                   eval_data=eval_data, columns=["input_ids", "labels"])


def test_adamw_is_foreach_on_the_cpu_and_fused_only_for_plain_cuda_parameters():
    model = Llama(TINY)
    optimizer = build_optimizer(model, AdamWConfig())
    assert optimizer.defaults["foreach"] is True and optimizer.defaults["fused"] is False
    assert not can_fuse_adamw(list(model.parameters())) and not can_fuse_adamw([])
    if torch.cuda.is_available():
        cuda_optimizer = build_optimizer(model.cuda(), AdamWConfig())
        assert cuda_optimizer.defaults["fused"] is True and cuda_optimizer.defaults["foreach"] is False


DISPATCH_MACHINERY = ("/torch/_compile.py", "/torch/_dynamo/", "/torch/utils/")  # frames between caller and mode


class ScalarReads(TorchDispatchMode):
    """Records `file:line` of the code that reads a tensor's value on the host (`.item()`, `float()`, `bool()`)."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            caller = next(frame for frame in reversed(traceback.extract_stack()[:-1])
                          if not any(part in frame.filename for part in DISPATCH_MACHINERY))
            self.sites.append(f"{Path(caller.filename).name}:{caller.lineno}")
        return func(*args, **(kwargs or {}))


def test_a_training_step_reads_nothing_back_from_the_device(tmp_path):
    trainer = tiny_trainer(tmp_path, eval_data=tiny_blocks(8))
    with ScalarReads() as reads:
        for _ in range(3):
            trainer.train_step()
    assert not [site for site in reads.sites if site.startswith("trainer.py")]
    with ScalarReads() as reads:  # the recorder does see the trainer's reads: evaluation's `.item()`
        trainer.evaluate()
    assert any(site.startswith("trainer.py") for site in reads.sites)
    steps = trainer.read_steps()
    assert len(steps) == 3 and trainer.tokens == 3 * 8 * 16 and trainer.read_steps() == []
    assert all(math.isfinite(loss) and grad_norm > 0 for loss, grad_norm in steps)


def test_the_loop_reads_the_device_only_when_it_logs_and_gets_every_steps_loss(tmp_path, monkeypatch):
    every_step = tiny_trainer(tmp_path / "every", log_every=1)
    expected = every_step.fit()
    trainer = tiny_trainer(tmp_path / "sparse", log_every=3)
    read_at = []
    real_read = trainer.read_steps

    def recorded_read():
        read_at.append(trainer.step)
        return real_read()

    monkeypatch.setattr(trainer, "read_steps", recorded_read)
    result = trainer.fit()
    assert read_at == [3, 6, 7]  # log steps, and the last step (evaluation and checkpoint)
    assert result.losses == expected.losses and len(result.losses) == 7  # exact: the same computation
    assert trainer.tokens == every_step.tokens == 7 * 8 * 16
    for got, reference in zip(trainer.raw_model.parameters(), every_step.raw_model.parameters(), strict=True):
        assert torch.equal(got, reference)


def test_a_non_finite_loss_between_reads_is_reported_at_its_own_step(tmp_path):
    calls = []

    def loss_turning_nan(model, batch) -> LossSum:
        calls.append(1)
        loss = causal_lm_loss(model, batch)
        return LossSum(loss.total * (math.nan if len(calls) > 2 else 1.0), loss.count)  # from step 2 on

    trainer = tiny_trainer(tmp_path, loss_fn=loss_turning_nan, log_every=5)
    with pytest.raises(NonFiniteLossError, match=r"^step 2: loss=nan.*checkpoint is none"):
        trainer.fit()
    assert trainer.step == 5 and not (tmp_path / "checkpoints").exists()
