"""The resume policy: lr, steps, logging and evaluation may change and take effect; the model, data, batch and
seed may not (unless forced); a run cannot be resumed to end before its checkpoint."""

import pytest
import torch
from safetensors.torch import load_file
from tiny_training import TINY, tiny_blocks, tiny_config, tiny_model

from llama_course.config import ModelConfig
from llama_course.model import Llama
from llama_course.training.metrics import read_metrics
from llama_course.training.schedule import warmup_cosine_factor
from llama_course.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

METADATA = {"model_config": TINY.to_dict(), "data": {"corpus": "random", "block_size": 16}, "tokenizer": "toy"}


def run(output_dir, *, model=None, metadata=METADATA, until_step=None, **overrides):
    trainer = Trainer(model or tiny_model(), tiny_blocks(), tiny_config(**overrides), output_dir, metadata=metadata)
    return trainer, trainer.fit(until_step=until_step)


def test_a_new_learning_rate_and_step_count_take_effect_on_resume_and_are_reported(tmp_path, capsys):
    run(tmp_path, until_step=2)  # lr 1e-2 over 6 steps, stopped at step 2
    trainer, _ = run(tmp_path, lr=2e-3, steps=8, log_every=2)
    report = capsys.readouterr().out
    assert "resuming from" in report and "at step 2" in report
    assert "lr: 0.01 -> 0.002" in report and "steps: 6 -> 8" in report and "log_every: 1 -> 2" in report
    records = {r["step"]: r for r in read_metrics(tmp_path) if "loss" in r}
    # the new peak and the new schedule length, from the resumed step on (step s logs the lr it trained with)
    for step in (4, 6, 8):
        assert records[step]["lr"] == pytest.approx(2e-3 * warmup_cosine_factor(step - 1, 2, 8))
    assert sorted(records) == [1, 2, 4, 6, 8]
    assert trainer.step == 8


def test_resuming_keeps_the_optimizer_moments_while_taking_the_new_lr(tmp_path):
    """The same checkpoint resumed with lr x2: after one step the update is exactly twice as large."""
    run(tmp_path / "a", until_step=3)
    run(tmp_path / "b", until_step=3)
    slow, _ = run(tmp_path / "a", until_step=4)
    fast, _ = run(tmp_path / "b", until_step=4, lr=2e-2)
    start = load_file(tmp_path / "a" / "checkpoints" / "step_00000003" / "model.safetensors")
    decayed = {name for name, p in start.items() if p.dim() >= 2 and "tok_embeddings" not in name}
    for (name, p_slow), p_fast in zip(slow.raw_model.named_parameters(), fast.raw_model.parameters(), strict=True):
        # AdamW: w' = w (1 - lr wd) - lr u, with u the same Adam direction for both runs
        shrink = (lambda lr: 1 - lr * 0.1) if name in decayed else (lambda lr: 1.0)
        update_slow = start[name] * shrink(1e-2 * warmup_cosine_factor(3, 2, 6)) - p_slow
        update_fast = start[name] * shrink(2e-2 * warmup_cosine_factor(3, 2, 6)) - p_fast
        torch.testing.assert_close(update_fast, 2 * update_slow, rtol=1e-9, atol=1e-14, msg=name)


@pytest.mark.parametrize(("change", "difference"), [
    (dict(micro_batch_size=8), "global_batch_size: 8 -> 16"),
    (dict(seed=1), "seed: 0 -> 1"),
    (dict(metadata=METADATA | {"data": {"corpus": "random", "block_size": 32}}), "data.block_size: 16 -> 32"),
    (dict(metadata=METADATA | {"tokenizer": "other.model"}), "tokenizer: 'toy' -> 'other.model'"),
    (dict(model=Llama(ModelConfig(**TINY.to_dict() | {"dim": 64})),
          metadata=METADATA | {"model_config": TINY.to_dict() | {"dim": 64}}), "model_config.dim: 32 -> 64"),
])
def test_changes_to_what_defines_the_run_are_refused_with_the_differences(tmp_path, change, difference):
    run(tmp_path, until_step=2)
    with pytest.raises(ValueError, match=rf"cannot resume from .*step_00000002.*\({difference}.*--force-resume"):
        run(tmp_path, **change)


def test_the_same_global_batch_split_differently_resumes(tmp_path, capsys):
    run(tmp_path, until_step=2)  # 4 sequences x 2 accumulation steps
    trainer, _ = run(tmp_path, micro_batch_size=2, grad_accum_steps=4)
    assert "micro_batch_size: 4 -> 2" in capsys.readouterr().out and trainer.step == 6


def test_force_resume_continues_and_reports_the_forced_differences(tmp_path, capsys):
    run(tmp_path, until_step=2)
    trainer, _ = run(tmp_path, seed=5, force_resume=True)
    assert "seed: 0 -> 5 (forced)" in capsys.readouterr().out and trainer.step == 6


def test_resuming_with_fewer_steps_than_done_is_a_clear_error(tmp_path):
    run(tmp_path, until_step=4)
    with pytest.raises(ValueError, match=r"steps=3 is below the step 4 of the checkpoint .*pass steps >= 4"):
        run(tmp_path, steps=3, warmup_steps=1)
    trainer, result = run(tmp_path, steps=4)  # exactly the checkpoint's step: nothing left to do
    assert trainer.step == 4 and result.losses == []
