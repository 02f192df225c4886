"""Activation checkpointing: the hand-written block backward is exact, every mode trains the same model."""

import dataclasses

import pytest
import torch

from llama_course.config import ATTENTION_BACKEND_NAMES, ModelConfig
from llama_course.layers.rope import rope_angles
from llama_course.measurements.profiling import bytes_kept_for_backward
from llama_course.model import Llama, TransformerBlock
from llama_course.training.activation_checkpointing import (
    CHECKPOINT_MODES,
    CheckpointedTransformerBlock,
    SelectiveAttentionSublayer,
    SelectiveFeedForwardSublayer,
    apply_activation_checkpointing,
)

CONFIG = ModelConfig(dim=24, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=53, multiple_of=8, max_seq_len=64)
# gradcheck perturbs every input number twice: a narrower block (head_dim 4, 3 query heads per KV head, hidden 32)
GRADCHECK_CONFIG = ModelConfig(dim=12, n_layers=1, n_heads=3, n_kv_heads=1, vocab_size=7, multiple_of=4)


def random_block(config=CONFIG, dtype=torch.float64):
    torch.manual_seed(0)
    block = TransformerBlock(config).to(dtype)
    with torch.no_grad():
        for param in block.parameters():  # gains away from 1 so their gradients are exercised too
            param.normal_(0.0, 0.3)
    return block


def rope_tables(seq_len, head_dim, dtype=torch.float64):
    cos, sin = rope_angles(torch.arange(seq_len, dtype=dtype)[None], head_dim)
    return cos.unsqueeze(1), sin.unsqueeze(1)  # (1, 1, T, hd/2)


@pytest.mark.parametrize("with_mask", [False, True])
def test_gradcheck_float64_hand_written_attention_sublayer(with_mask):
    block, seq_len = random_block(GRADCHECK_CONFIG), 5
    x = torch.randn(2, seq_len, GRADCHECK_CONFIG.dim, dtype=torch.float64, requires_grad=True)
    cos, sin = rope_tables(seq_len, GRADCHECK_CONFIG.head_dim)
    mask = None
    if with_mask:  # sequence 0 packs two documents of 2 and 3 tokens
        mask = torch.tril(torch.ones(2, 1, seq_len, seq_len, dtype=torch.bool))
        mask[0, 0, 2:, :2] = False
    attention = block.attention
    weights = [block.attention_norm.weight, attention.wq.weight, attention.wk.weight, attention.wv.weight,
               attention.wo.weight]  # fmt: skip

    def sublayer(x, *weights):
        return SelectiveAttentionSublayer.apply(x, block, cos, sin, mask, *weights)

    assert torch.autograd.gradcheck(sublayer, (x, *weights))


def test_gradcheck_float64_hand_written_feed_forward_sublayer():
    block = random_block(GRADCHECK_CONFIG)
    h = torch.randn(2, 3, GRADCHECK_CONFIG.dim, dtype=torch.float64, requires_grad=True)
    ffn = block.feed_forward
    weights = [block.ffn_norm.weight, ffn.w1.weight, ffn.w3.weight, ffn.w2.weight]

    def sublayer(h, *weights):
        return SelectiveFeedForwardSublayer.apply(h, block, *weights)

    # fast mode compares random projections of the Jacobian, to which all of its ~1200 columns contribute
    assert torch.autograd.gradcheck(sublayer, (h, *weights), fast_mode=True)


def loss_and_grads(backend, mode, inputs):
    torch.manual_seed(0)
    model = Llama(dataclasses.replace(CONFIG, attention_backend=backend)).double()
    apply_activation_checkpointing(model, mode)
    loss = model(inputs["tokens"], **inputs["kwargs"]).loss
    return loss, torch.autograd.grad(loss, list(model.parameters()))


BATCH = {
    "causal": {},
    "left_padding": {"attention_mask": torch.tensor([[0] * 4 + [1] * 15, [1] * 19])},
    "packed_documents": {"document_ids": torch.tensor([[0] * 6 + [1] * 13, [0] * 11 + [1] * 8])},
}


@pytest.mark.parametrize("batch_kind", list(BATCH))
@pytest.mark.parametrize("mode", CHECKPOINT_MODES)
@pytest.mark.parametrize("backend", ATTENTION_BACKEND_NAMES)
def test_every_mode_and_backend_gives_the_same_loss_and_gradients(backend, mode, batch_kind):
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, CONFIG.vocab_size, (2, 19), generator=generator)
    targets = torch.randint(0, CONFIG.vocab_size, (2, 19), generator=generator)
    inputs = {"tokens": tokens, "kwargs": {"targets": targets, **BATCH[batch_kind]}}
    loss, grads = loss_and_grads(backend, mode, inputs)
    expected_loss, expected_grads = loss_and_grads("eager", "none", inputs)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=0)
    for grad, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)


def test_saved_bytes_per_mode_in_a_block():
    config = dataclasses.replace(CONFIG, attention_backend="memory_efficient")
    block, (batch, seq_len) = random_block(config, torch.float32), (2, 33)
    x = torch.randn(batch, seq_len, config.dim, requires_grad=True)
    cos, sin = rope_tables(seq_len, config.head_dim, torch.float32)
    parameters = list(block.parameters())

    def kept(mode):
        apply_activation_checkpointing(block, mode)
        return bytes_kept_for_backward(lambda: block(x, cos, sin)[0], ignore=parameters).total

    tokens, kv_dim = batch * seq_len, config.n_kv_heads * config.head_dim
    rope_bytes = 2 * cos.numel() * 4
    # selective: x, outputs of wq, wk, wv, the attention output and its row log-sum-exp, h, outputs of w1 and w3
    selective = 4 * tokens * (config.dim + config.dim + 2 * kv_dim + config.dim + config.n_heads + config.dim)
    selective += 4 * tokens * 2 * config.hidden_dim + rope_bytes
    assert kept("selective") == selective
    assert kept("full") == 4 * tokens * config.dim + rope_bytes  # only the block's inputs
    assert kept("full") < kept("selective-policy") < kept("none")
    assert kept("selective") < kept("none")


def test_modes_keep_parameter_names_and_are_undone_by_none():
    model = Llama(CONFIG)
    names = list(model.state_dict())
    apply_activation_checkpointing(model, "selective")
    assert all(type(layer) is CheckpointedTransformerBlock for layer in model.layers)
    assert list(model.state_dict()) == names
    apply_activation_checkpointing(model, "none")
    assert all(type(layer) is TransformerBlock for layer in model.layers)
    with pytest.raises(ValueError, match="checkpoint mode 'partial' is unknown"):
        apply_activation_checkpointing(model, "partial")


def test_decoding_with_a_cache_is_unchanged_by_checkpointing():
    torch.manual_seed(0)
    model = Llama(CONFIG).double()
    tokens = torch.randint(0, CONFIG.vocab_size, (2, 9))
    with torch.no_grad():
        expected = model(tokens).logits
        apply_activation_checkpointing(model, "selective")
        cache = model.new_cache(2)
        prefix = model(tokens[:, :5], cache=cache).logits
        step = torch.cat([model(tokens[:, i : i + 1], cache=cache).logits for i in range(5, 9)], dim=1)
    torch.testing.assert_close(torch.cat([prefix, step], dim=1), expected)
