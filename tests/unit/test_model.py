import pytest
import torch
import torch.nn.functional as F

from llama_course.config import ModelConfig
from llama_course.model import IGNORE_INDEX, Llama, ScalarHead

CONFIG = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=16, max_seq_len=64)


@pytest.fixture(scope="module")
def model() -> Llama:
    torch.manual_seed(0)
    return Llama(CONFIG).double().eval()


def tokens_like(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def test_initialisation_is_documented_scheme():
    torch.manual_seed(0)
    model = Llama(ModelConfig(dim=256, n_layers=8, n_heads=4, vocab_size=1000, multiple_of=64))
    assert model.output.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.layers[0].attention.wo.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert model.layers[0].feed_forward.w2.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert bool((model.norm.weight == 1).all())
    assert model.output.weight.data_ptr() != model.tok_embeddings.weight.data_ptr()  # untied


def test_cached_decoding_equals_recomputing_the_prefix(model):
    tokens = tokens_like(2, 12)
    full = model(tokens).logits
    cache = model.new_cache(2, 12)
    pieces = [model(tokens[:, :5], cache=cache).logits]
    pieces += [model(tokens[:, t : t + 1], cache=cache).logits for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-10, atol=1e-10)


def test_left_padded_batch_equals_each_sequence_alone(model):
    short, long = tokens_like(1, 4, seed=1), tokens_like(1, 9, seed=2)
    batch = torch.zeros(2, 9, dtype=torch.long)
    batch[0, 5:], batch[1] = short[0], long[0]
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :5] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(batch, positions=positions, attention_mask=mask).logits
    torch.testing.assert_close(logits[0, 5:], model(short).logits[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logits[1], model(long).logits[0], rtol=1e-10, atol=1e-10)
    assert torch.isfinite(logits).all()


def test_packed_documents_equal_separate_sequences(model):
    first, second = tokens_like(1, 5, seed=3), tokens_like(1, 7, seed=4)
    packed = torch.cat([first, second], dim=1)
    document_ids = torch.tensor([[0] * 5 + [1] * 7])
    logits = model(packed, document_ids=document_ids).logits
    torch.testing.assert_close(logits[:, :5], model(first).logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logits[:, 5:], model(second).logits, rtol=1e-10, atol=1e-10)
    # Without the document mask the second document sees the first and its logits change.
    assert not torch.allclose(model(packed).logits[:, 5:], model(second).logits)


def test_loss_is_cross_entropy_over_non_ignored_targets(model):
    tokens, targets = tokens_like(2, 10, seed=5), tokens_like(2, 10, seed=6)
    targets[0, :4] = IGNORE_INDEX
    out = model(tokens, targets=targets)
    assert out.logits is None  # the loss is computed chunk by chunk, without the full logits
    log_probs = model(tokens).logits.log_softmax(-1)
    keep = targets != IGNORE_INDEX
    manual = -log_probs[keep].gather(-1, targets[keep][:, None])
    torch.testing.assert_close(out.loss, manual.mean())
    torch.testing.assert_close(model(tokens, targets=targets, loss_reduction="sum").loss, manual.sum())
    assert model(tokens).loss is None


def test_attention_backends_give_the_same_logits(model):
    tokens = tokens_like(2, 16, seed=7)
    reference = model(tokens).logits
    for backend in ("eager", "sdpa", "memory_efficient"):
        model.set_attention_backend(backend)
        torch.testing.assert_close(model(tokens).logits, reference, rtol=1e-10, atol=1e-10)
    model.set_attention_backend(CONFIG.attention_backend)


def test_attention_weights_returned_by_eager(model):
    model.set_attention_backend("eager")
    model(tokens_like(1, 6), need_weights=True)
    assert len(model.last_attention) == CONFIG.n_layers
    assert model.last_attention[0].shape == (1, CONFIG.n_heads, 6, 6)
    torch.testing.assert_close(model.last_attention[1].sum(-1), torch.ones(1, CONFIG.n_heads, 6, dtype=torch.float64))
    model.set_attention_backend(CONFIG.attention_backend)


def test_gradients_flow_to_every_parameter():
    torch.manual_seed(0)
    model = Llama(CONFIG)
    tokens = tokens_like(2, 8)
    model(tokens, targets=tokens).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_sequence_longer_than_context_is_rejected(model):
    with pytest.raises(ValueError, match="sequence of 65 tokens .* exceeds the context of 64"):
        model(tokens_like(1, 65))


@pytest.mark.parametrize("bad", [-1, 97])
def test_token_ids_out_of_range_are_rejected(model, bad):
    tokens = tokens_like(1, 4)
    tokens[0, 2] = bad
    with pytest.raises(ValueError, match=f"token id {bad} is outside the vocabulary \\[0, 97\\)"):
        model(tokens)


def test_mismatched_shapes_are_rejected(model):
    with pytest.raises(ValueError, match="targets must have the shape of tokens"):
        model(tokens_like(2, 4), targets=tokens_like(2, 5))
    with pytest.raises(ValueError, match="tokens must be \\(batch, seq_len\\)"):
        model(tokens_like(4))


def test_cache_overflow_is_rejected(model):
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="exceeds the context of 4"):
        model(tokens_like(1, 5), cache=cache)


def test_bfloat16_model_gives_float32_logits_and_loss():
    torch.manual_seed(0)
    model = Llama(CONFIG).to(torch.bfloat16)
    logits = model(tokens_like(1, 4)).logits
    assert logits.dtype == torch.float32
    loss = model(tokens_like(1, 4), targets=tokens_like(1, 4, seed=9)).loss
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(logits[0], tokens_like(1, 4, seed=9)[0]), rtol=0.02, atol=0.02)


def test_scalar_head_replaces_the_output_with_one_zero_weight_row_for_reward_and_value_models():
    from llama_course.alignment.ppo_rollout import ValueModel
    from llama_course.alignment.reward import RewardModel

    config = ModelConfig(dim=32, n_layers=1, n_heads=4, vocab_size=97, max_seq_len=16)
    backbone = ScalarHead.attach(Llama(config).double())
    assert isinstance(backbone.output, ScalarHead) and backbone.output.bias is None
    assert backbone.output.weight.shape == (1, 32) and backbone.output.weight.dtype == torch.float64
    assert sorted(backbone.state_dict()) == sorted(Llama(config).state_dict()), "the same parameter names"
    assert torch.equal(backbone(tokens_like(2, 5)).logits, torch.zeros(2, 5, 1, dtype=torch.float64))
    assert isinstance(RewardModel(Llama(config), eos_id=2).backbone.output, ScalarHead)
    assert isinstance(ValueModel(Llama(config)).backbone.output, ScalarHead)
