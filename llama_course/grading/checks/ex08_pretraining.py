"""Tests of exercise 8: the warm-up + cosine schedule, the weight-decay split and the training FLOPs per token.

Llama 1, section 2.2 (AdamW, weight decay 0.1, cosine schedule to 10% after 2,000 warm-up steps); the FLOPs
count of PaLM, appendix B.
"""


import torch
from torch import nn

from llama_course.config import PRESETS, ModelConfig, count_parameters
from llama_course.grading.assertions import assert_equal, assert_number_close
from llama_course.grading.registry import Exercise
from llama_course.model import Llama
from llama_course.training.mfu import training_flops_per_token as reference_flops_per_token
from llama_course.training.optim import split_decay_parameters as reference_split
from llama_course.training.schedule import warmup_cosine_factor as reference_factor

EXERCISE = Exercise(chapter=8, name="08_pretraining", title="Pretraining")

SCHEDULES = ((20, 100, 0.1), (2000, 10000, 0.1), (1, 7, 0.0), (5, 5, 0.3))


@EXERCISE.test("warmup_cosine_factor", points=2)
def factor_matches_the_reference_at_every_step(warmup_cosine_factor):
    for warmup, total, final in SCHEDULES:
        for step in sorted({*range(0, total + 3, max(1, total // 37)), warmup - 1, warmup, total - 1, total}):
            if step < 0:
                continue
            assert_number_close(warmup_cosine_factor(step, warmup, total, final),
                                reference_factor(step, warmup, total, final),
                                what=f"the factor at step {step} (warmup {warmup}, total {total}, final ratio {final})")


@EXERCISE.test("warmup_cosine_factor", points=1)
def schedule_peaks_after_warmup_then_decays_to_the_final_ratio(warmup_cosine_factor):
    factors = [warmup_cosine_factor(step, 10, 50, 0.1) for step in range(60)]
    assert_number_close(factors[9], 1.0, what="the factor on the last warm-up step (step 9 of 10)")
    assert_number_close(factors[55], 0.1, what="the factor after the last step")
    increasing = all(a < b for a, b in zip(factors[:9], factors[1:10], strict=True))
    decreasing = all(a >= b for a, b in zip(factors[9:-1], factors[10:], strict=True))
    assert_equal((increasing, decreasing), (True, True),
                 what="(rises during warm-up, never rises after it)")


class OddlyNamedModel(nn.Module):
    """Names that give nothing away: an embedding, a linear map with a bias, a norm, a frozen matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(10, 4)
        self.mix = nn.Linear(4, 6)
        self.scale = nn.LayerNorm(6)
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)
        self.weights_2d = nn.Parameter(torch.zeros(6, 2))


@EXERCISE.test("split_decay_parameters", points=2)
def split_matches_the_reference_for_a_llama(split_decay_parameters):
    model = Llama(ModelConfig(dim=16, n_layers=2, n_heads=2, vocab_size=20, multiple_of=8))
    decay, no_decay = split_decay_parameters(model)
    expected_decay, expected_no_decay = reference_split(model)
    assert_equal(sorted(decay), sorted(expected_decay), what="the decayed parameters of a 2-layer Llama")
    assert_equal(sorted(no_decay), sorted(expected_no_decay), what="the parameters without decay of a 2-layer Llama")


@EXERCISE.test("split_decay_parameters", points=2)
def split_goes_by_module_type_and_shape_and_skips_frozen_parameters(split_decay_parameters):
    model = OddlyNamedModel()
    decay, no_decay = split_decay_parameters(model)
    expected_decay, expected_no_decay = reference_split(model)
    assert_equal(sorted(decay), sorted(expected_decay), what="the decayed parameters of a model with unusual names")
    assert_equal(sorted(no_decay), sorted(expected_no_decay),
                 what="the parameters without decay of a model with unusual names")


def flops_of(training_flops_per_token, config: ModelConfig, seq_len: int) -> int:
    return training_flops_per_token(count_parameters(config), config.vocab_size, config.dim, config.n_layers,
                                    config.n_heads, seq_len)


@EXERCISE.test("training_flops_per_token", points=2)
def flops_match_the_reference_for_the_llama_presets(training_flops_per_token):
    for name, seq_len in (("llama1-7b", 2048), ("llama1-65b", 2048), ("llama2-70b", 4096), ("tiny", 256)):
        assert_equal(flops_of(training_flops_per_token, PRESETS[name], seq_len),
                     reference_flops_per_token(PRESETS[name], seq_len),
                     what=f"the training FLOPs per token of {name} at sequence length {seq_len}")


@EXERCISE.test("training_flops_per_token", points=1)
def doubling_the_sequence_adds_only_attention_flops(training_flops_per_token):
    config = PRESETS["llama2-7b"]
    short, long = (flops_of(training_flops_per_token, config, seq_len) for seq_len in (2048, 4096))
    assert_equal(long - short, 12 * config.n_layers * config.dim * 2048,
                 what="the extra FLOPs per token of 4096 tokens over 2048 for llama2-7b")


EXERCISE.references("warmup_cosine_factor", reference_factor)
EXERCISE.references("split_decay_parameters", reference_split)
EXERCISE.references("training_flops_per_token", reference_flops_per_token)
