"""The trainer: optimizer split, schedule, loss normalisation, exact resume, atomic checkpoints, NaN stop."""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_training import tiny_blocks, tiny_config, tiny_model, train

from llama_course.model import IGNORE_INDEX
from llama_course.training import checkpoint as checkpoint_module
from llama_course.training.batches import ShardedBatches
from llama_course.training.checkpoint import latest_checkpoint, list_checkpoints
from llama_course.training.metrics import plot_metrics, read_metrics
from llama_course.training.optim import AdamWConfig, build_optimizer, split_decay_parameters
from llama_course.training.schedule import warmup_cosine_factor
from llama_course.training.trainer import LossSum, NonFiniteLossError, Trainer, TrainerConfig, causal_lm_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def test_no_decay_for_norm_gains_and_embedding_only():
    decay, no_decay = split_decay_parameters(tiny_model())
    assert set(no_decay) == {"tok_embeddings.weight", "norm.weight"} | {
        f"layers.{i}.{norm}.weight" for i in range(2) for norm in ("attention_norm", "ffn_norm")
    }
    assert "output.weight" in decay and "layers.0.attention.wq.weight" in decay
    assert len(decay) + len(no_decay) == len(list(tiny_model().parameters()))


def test_adamw_with_zero_gradient_only_shrinks_decayed_weights_by_lr_times_wd():
    model = tiny_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = build_optimizer(model, AdamWConfig(lr=0.5, weight_decay=0.1))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    decay, no_decay = split_decay_parameters(model)
    params = dict(model.named_parameters())
    for name in decay:
        torch.testing.assert_close(params[name], before[name] * (1 - 0.5 * 0.1))
    for name in no_decay:
        torch.testing.assert_close(params[name], before[name], rtol=0, atol=0)


def test_optimizer_config_rejects_bad_values():
    with pytest.raises(ValueError, match="beta2=1.0"):
        AdamWConfig(beta2=1.0)
    with pytest.raises(ValueError, match="warmup_steps=20 exceeds steps=10"):
        TrainerConfig(steps=10, warmup_steps=20)


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_ten_percent():
    warmup, total = 10, 110
    assert warmup_cosine_factor(0, warmup, total) == pytest.approx(0.1)
    assert warmup_cosine_factor(4, warmup, total) == pytest.approx(0.5)
    assert warmup_cosine_factor(10, warmup, total) == pytest.approx(1.0)
    assert warmup_cosine_factor(60, warmup, total) == pytest.approx(0.55)  # halfway: (1 + 0.1) / 2
    assert warmup_cosine_factor(35, warmup, total) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert warmup_cosine_factor(110, warmup, total) == pytest.approx(0.1)
    assert warmup_cosine_factor(500, warmup, total) == pytest.approx(0.1)


def test_global_batch_is_the_same_blocks_however_it_is_split():
    data = tiny_blocks()
    whole = ShardedBatches(data, micro_batch_size=8, seed=3).next_step()[0]["input_ids"]
    split = [
        batch["input_ids"]
        for rank in range(2)
        for batch in ShardedBatches(data, micro_batch_size=2, grad_accum_steps=2, rank=rank, world_size=2,
                                    seed=3).next_step()
    ]
    # layout (accum, world, micro): rank 0 holds rows 0-1 and 4-5, rank 1 rows 2-3 and 6-7
    torch.testing.assert_close(torch.cat([split[0], split[2], split[1], split[3]]), whole)


def test_one_step_equals_a_hand_written_float64_reference(tmp_path):
    """Token-weighted mean over the global batch, clipping to 1.0, AdamW with the decay split, warm-up LR."""
    data = tiny_blocks()
    config = tiny_config(steps=1, warmup_steps=1, grad_clip=0.05, checkpoint_every=0)
    reference = tiny_model().double()
    trainer = Trainer(tiny_model(), data, config, tmp_path)
    rows = ShardedBatches(data, micro_batch_size=8, seed=0).next_step()[0]
    trainer.train_step()

    logits = reference(rows["input_ids"], document_ids=rows["document_ids"]).logits
    loss = F.cross_entropy(logits.flatten(0, 1), rows["labels"].flatten(), ignore_index=IGNORE_INDEX)
    loss.backward()
    norm = torch.sqrt(sum((p.grad**2).sum() for p in reference.parameters()))
    assert norm > 0.05  # so clipping is exercised
    decay, _ = split_decay_parameters(reference)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            grad = p.grad * (0.05 / (norm + 1e-6))  # torch clip_grad_norm_ adds 1e-6 to the norm
            # Adam's first step: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps)
            p.mul_(1 - 1e-2 * 0.1 if name in decay else 1.0)
            p.sub_(1e-2 * grad / (grad.abs() + 1e-5))
    for (name, got), expected in zip(trainer.raw_model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12, msg=name)


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    accumulated, _ = train(tmp_path / "a", micro_batch_size=2, grad_accum_steps=4, steps=3)
    large, _ = train(tmp_path / "b", micro_batch_size=8, grad_accum_steps=1, steps=3)
    for got, expected in zip(accumulated.raw_model.parameters(), large.raw_model.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_resumed_run_reproduces_the_uninterrupted_one_bit_for_bit(tmp_path):
    whole_trainer, whole = train(tmp_path / "whole")
    _, first = train(tmp_path / "split", until_step=3)
    assert latest_checkpoint(tmp_path / "split").name == "step_00000003"
    # A different initialisation proves that the weights come from the checkpoint.
    resumed_trainer, rest = train(tmp_path / "split", seed=123)
    assert first.losses + rest.losses == whole.losses  # exact equality, not a tolerance
    for got, expected in zip(resumed_trainer.raw_model.parameters(), whole_trainer.raw_model.parameters(),
                             strict=True):
        assert torch.equal(got, expected)
    steps = [r["step"] for r in read_metrics(tmp_path / "split") if "loss" in r]
    assert steps == list(range(1, 7))
    assert [r["loss"] for r in read_metrics(tmp_path / "split")] == whole.losses


def test_metrics_follow_the_schedule_and_plot(tmp_path):
    train(tmp_path, steps=6, warmup_steps=2)
    records = [r for r in read_metrics(tmp_path) if "loss" in r]
    expected = [1e-2 * warmup_cosine_factor(step, 2, 6) for step in range(6)]
    assert [r["lr"] for r in records] == pytest.approx(expected)
    assert records[-1]["tokens"] == 6 * 8 * 16
    plot_metrics(tmp_path, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_a_kill_during_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    trainer, _ = train(tmp_path, steps=6, until_step=2)
    real_save = torch.save

    def crash_after_optimizer(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        raise KeyboardInterrupt("killed in the middle of a save")

    monkeypatch.setattr(checkpoint_module.torch, "save", crash_after_optimizer)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(until_step=4)
    monkeypatch.undo()
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step_00000002"]
    assert (tmp_path / "checkpoints" / ".tmp-step_00000004").exists()  # the half-written one, ignored
    resumed, result = train(tmp_path, steps=6)
    reference, _ = train(tmp_path / "reference", steps=6)
    for got, expected in zip(resumed.raw_model.parameters(), reference.raw_model.parameters(), strict=True):
        assert torch.equal(got, expected)
    assert result.step == 6


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    calls = []

    def loss_turning_nan(model, batch) -> LossSum:
        calls.append(1)
        loss = causal_lm_loss(model, batch)
        return LossSum(loss.total * (math.nan if len(calls) > 4 else 1.0), loss.count)

    trainer = Trainer(tiny_model(), tiny_blocks(), tiny_config(checkpoint_every=1), tmp_path,
                      loss_fn=loss_turning_nan)
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss=nan.*step_00000002"):
        trainer.fit()
    assert latest_checkpoint(tmp_path).name == "step_00000002"


def test_evaluation_is_the_token_weighted_loss_of_the_eval_blocks(tmp_path):
    data = tiny_blocks()
    trainer = Trainer(tiny_model(), data, tiny_config(eval_batches=2), tmp_path, eval_data=data)
    rows = data[list(range(8))]
    logits = tiny_model().double()(rows["input_ids"], document_ids=rows["document_ids"]).logits
    expected = F.cross_entropy(logits.flatten(0, 1), rows["labels"].flatten(), ignore_index=IGNORE_INDEX)
    assert trainer.evaluate() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_activation_checkpointing_leaves_training_unchanged(tmp_path, mode):
    """Checkpointing only trades memory for recomputation: the losses of a short run are the same."""
    plain_trainer, plain = train(tmp_path / "none", steps=3)
    checkpointed_trainer, checkpointed = train(tmp_path / mode, steps=3, activation_checkpointing=mode)
    assert checkpointed.losses == pytest.approx(plain.losses, rel=1e-10)
    for got, expected in zip(checkpointed_trainer.raw_model.parameters(), plain_trainer.raw_model.parameters(),
                             strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
