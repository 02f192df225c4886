import pytest
import torch
from torch import nn

from llama_course.config import ModelConfig
from llama_course.generation import cpu_decoding_layout, generate, left_pad, positions_from_mask, sample_next_token
from llama_course.model import Llama

CONFIG = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=61, multiple_of=16, max_seq_len=48)
PROMPTS = [[5, 6, 7, 8, 9], [11, 12], [3, 1, 4, 1, 5, 9, 2]]


@pytest.fixture(scope="module")
def model() -> Llama:
    torch.manual_seed(0)
    return Llama(CONFIG).eval()


def test_greedy_cached_equals_uncached_and_unbatched(model):
    cached = generate(model, PROMPTS, 12)
    assert cached == generate(model, PROMPTS, 12, use_cache=False)
    assert cached == [generate(model, [prompt], 12)[0] for prompt in PROMPTS]


def test_greedy_takes_the_argmax_of_the_full_forward(model):
    prompt = PROMPTS[0]
    out = generate(model, [prompt], 4)[0]
    sequence = list(prompt)
    for token in out:
        logits = model(torch.tensor([sequence])).logits[0, -1]
        assert token == int(logits.argmax())
        sequence.append(token)


def test_seeded_sampling_is_reproducible_and_seed_dependent(model):
    kwargs = dict(temperature=1.0, top_p=0.95)
    first = generate(model, PROMPTS, 10, seed=123, **kwargs)
    assert first == generate(model, PROMPTS, 10, seed=123, **kwargs)
    assert first != generate(model, PROMPTS, 10, seed=124, **kwargs)


def test_generation_stops_at_eos_and_pads_finished_rows(model):
    greedy = generate(model, PROMPTS, 6)
    eos = greedy[0][2]  # make the third greedy token of the first prompt the end of sequence
    out = generate(model, PROMPTS, 6, eos_id=eos, pad_id=0 if eos else 1)
    assert out[0] == greedy[0][:3]
    assert all(seq[-1] == eos or len(seq) == 6 for seq in out)


def test_top_k_restricts_support():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]).repeat(2000, 1)
    tokens = sample_next_token(logits, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {3, 4}
    share_of_top = (tokens == 4).float().mean().item()
    assert share_of_top == pytest.approx(torch.tensor([3.0, 4.0]).softmax(0)[1].item(), abs=0.03)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None].repeat(4000, 1)
    tokens = sample_next_token(logits, temperature=1.0, top_p=0.8, generator=torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.8
    assert (tokens == 0).float().mean().item() == pytest.approx(0.5 / 0.8, abs=0.03)


def test_temperature_sharpens_distribution():
    logits = torch.tensor([[0.0, 1.0]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    cold = sample_next_token(logits, temperature=0.25, generator=g).float().mean().item()
    hot = sample_next_token(logits, temperature=4.0, generator=g).float().mean().item()
    assert cold == pytest.approx(torch.tensor([0.0, 4.0]).softmax(0)[1].item(), abs=0.03)
    assert hot == pytest.approx(torch.tensor([0.0, 0.25]).softmax(0)[1].item(), abs=0.03)


def test_left_pad_and_positions():
    tokens, mask = left_pad([[7, 8, 9], [4]], pad_id=0)
    assert tokens.tolist() == [[7, 8, 9], [0, 0, 4]]
    assert positions_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"temperature": -1.0}, "temperature=-1.0"),
    ({"temperature": 1.0, "top_k": 0}, "top_k=0"),
    ({"temperature": 1.0, "top_p": 1.5}, "top_p=1.5"),
    ({"eos_id": 2, "pad_id": 2}, "pad_id=2 equals eos_id"),
])
def test_bad_sampling_arguments(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, PROMPTS, 3, **kwargs)


def test_prompt_errors(model):
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]], 3)
    with pytest.raises(ValueError, match="exceeds the model's context of 48"):
        generate(model, [[1] * 40], 9)


def test_cpu_decoding_layout_gives_the_same_logits_and_lives_only_inside_the_block():
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=False)
    x = torch.randn(3, 1, 16)
    expected = x.double() @ head.weight.double().T
    with torch.no_grad(), cpu_decoding_layout(head):
        assert "forward" in vars(head)
        fast = head(x)
    assert "forward" not in vars(head)
    torch.testing.assert_close(fast.double(), expected, rtol=1e-5, atol=1e-5)
    with cpu_decoding_layout(head):  # with autograd on, the parameter itself is used, so its gradient flows
        head(x).sum().backward()
    torch.testing.assert_close(head.weight.grad, x.sum(dim=(0, 1)).expand(50, 16))
    with pytest.raises(RuntimeError), torch.no_grad(), cpu_decoding_layout(head):
        raise RuntimeError("an error inside the block")
    assert "forward" not in vars(head)  # freed on the way out
