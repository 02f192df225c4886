"""Library edge cases found by probing: each is a clear error (or the right answer), never a silent wrong one."""

import math

import pytest
import torch
from tiny_training import TINY

from llama_course.alignment.ppo import clipped_value_loss, entropy, per_token_rewards
from llama_course.alignment.reward import combine_rewards, margin_ranking_loss, margins_for
from llama_course.generation import generate, sample_next_token
from llama_course.model import Llama
from llama_course.toyworld import toy_tokenizer


def test_margin_ranking_loss_refuses_a_margin_that_would_broadcast_to_a_matrix():
    r_chosen, r_rejected = torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3)
    with pytest.raises(ValueError, match=r"margin \(3, 1\) must be a number or one margin per pair"):
        margin_ranking_loss(r_chosen, r_rejected, torch.ones(3, 1))
    per_pair = margin_ranking_loss(r_chosen, r_rejected, torch.tensor([1.0, 0.0, 2.0]))
    torch.testing.assert_close(per_pair, torch.nn.functional.softplus(-torch.tensor([0.0, 2.0, 1.0])))


def test_margins_for_refuses_strength_indices_outside_the_table():
    assert margins_for(torch.tensor([0, 3]), "large").tolist() == [3.0, 0.0]
    for bad in (-1, 4):
        with pytest.raises(ValueError, match=rf"strength indices \[{bad}\] are outside \[0, 4\)"):
            margins_for(torch.tensor([0, bad]), "large")


def test_per_token_rewards_put_the_score_on_the_last_real_token_of_a_left_padded_row():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    zeros = torch.zeros(2, 4)
    rewards = per_token_rewards(torch.tensor([5.0, 7.0]), zeros, zeros, mask, beta=0.1)
    assert rewards.tolist() == [[0, 0, 0, 5.0], [0, 0, 7.0, 0]]


def test_clipped_value_loss_refuses_a_non_positive_clip():
    values = torch.zeros(1, 3)
    for clip in (-0.2, 0.0, math.nan):
        with pytest.raises(ValueError, match=f"clip={clip} must be > 0"):
            clipped_value_loss(values, values, values, torch.ones(1, 3), clip=clip)


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan, math.inf])
def test_entropy_refuses_a_temperature_without_a_distribution(temperature):
    with pytest.raises(ValueError, match=f"temperature={temperature} must be a positive finite number"):
        entropy(torch.zeros(2, 5), temperature)
    assert entropy(torch.zeros(2, 5), 1.0).tolist() == pytest.approx([math.log(5)] * 2)


def test_combine_rewards_refuses_nan_scores():
    good = torch.tensor([0.2, 0.9])
    with pytest.raises(ValueError, match=r"safety scores hold NaN at \[1\]"):
        combine_rewards(good, torch.tensor([0.5, math.nan]), [False, False])


@pytest.mark.parametrize(("setting", "message"), [
    (dict(temperature=math.nan), "temperature=nan must be a finite number >= 0"),
    (dict(temperature=math.inf), "temperature=inf must be a finite number >= 0"),
    (dict(temperature=1.0, top_p=math.nan), r"top_p=nan must be in \(0, 1\]"),
    (dict(temperature=1.0, top_k=2.5), "top_k=2.5 must be >= 1"),
])
def test_generate_refuses_non_finite_sampling_settings(setting, message):
    with pytest.raises(ValueError, match=message):
        generate(Llama(TINY), [[1, 2]], 3, **setting)
    with pytest.raises(ValueError, match=message):
        sample_next_token(torch.zeros(1, 4), **setting)


def test_a_lone_surrogate_is_a_clear_tokenizer_error():
    tokenizer = toy_tokenizer()
    with pytest.raises(ValueError, match=r"the text holds '\\ud800' at character 2, a lone surrogate"):
        tokenizer.encode("ab\ud800c")
    with pytest.raises(ValueError, match=r"text\[1\] holds '\\udcff' at character 0"):
        tokenizer.encode(["fine", "\udcff"])
    assert tokenizer.decode(tokenizer.encode("ab\u00e9c")) == "ab\u00e9c"
