"""Where the parameters go: the formula split equals the split counted on the model's own tensors."""

import pytest
import torch

from llama_course.config import PRESETS, count_parameters
from llama_course.measurements.parameter_budget import GROUPS, group_of, parameter_breakdown, parameter_groups_of_model
from llama_course.model import Llama


@pytest.mark.parametrize("name", list(PRESETS))
def test_breakdown_matches_the_instantiated_model_and_sums_to_the_total(name):
    config = PRESETS[name]
    with torch.device("meta"):  # shapes only: even 70B allocates nothing
        model = Llama(config)
    assert parameter_groups_of_model(model) == parameter_breakdown(config)
    assert sum(parameter_breakdown(config).values()) == count_parameters(config)


def test_llama2_70b_grouped_query_attention_shrinks_attention_not_the_ffn():
    """70B: wq, wo are 8192 x 8192; wk, wv 8192 x 1024 (8 KV heads of 128); the FFN is 3 x 8192 x 28672."""
    breakdown = parameter_breakdown(PRESETS["llama2-70b"])
    assert breakdown["attention"] == 80 * (2 * 8192 * 8192 + 2 * 8192 * 1024)
    assert breakdown["feed_forward"] == 80 * 3 * 8192 * 28672
    assert breakdown["embedding"] == breakdown["output"] == 32000 * 8192
    assert set(breakdown) == set(GROUPS)


def test_unknown_parameter_name_is_a_clear_error():
    with pytest.raises(ValueError, match="'lm_head.bias'"):
        group_of("lm_head.bias")
