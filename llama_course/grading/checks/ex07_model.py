"""Tests of exercise 7: the parameter count, Meta -> Hugging Face state dicts, and the assembled forward pass.

Llama 1, section 2.2 and Table 2 (architecture and sizes); Llama 2, section 2.2 (grouped-query attention).
"""

import torch

from llama_course.config import PRESETS, ModelConfig, count_parameters
from llama_course.grading.assertions import assert_equal, assert_tensor_close
from llama_course.grading.registry import Exercise
from llama_course.interop.state_dicts import to_hf_state_dict
from llama_course.model import Llama

EXERCISE = Exercise(chapter=7, name="07_model", title="The whole model")

# Grouped-query attention (4 query heads, 2 KV heads) so that wq and wk are permuted with different head counts.
SMALL = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, multiple_of=16, max_seq_len=16,
                    attention_backend="eager")


def small_model(seed: int) -> Llama:
    torch.manual_seed(seed)
    model = Llama(SMALL).double()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)  # gains of 1 would hide a skipped or misplaced norm
    return model.eval()


def count_of(count_llama_parameters, config: ModelConfig) -> int:
    return count_llama_parameters(config.dim, config.n_layers, config.n_heads, config.n_kv_heads,
                                  config.vocab_size, config.hidden_dim)


@EXERCISE.test("count_llama_parameters", points=2)
def count_matches_the_reference_for_every_llama_preset(count_llama_parameters):
    for name in ("llama1-7b", "llama1-65b", "llama2-13b", "llama2-70b"):
        assert_equal(count_of(count_llama_parameters, PRESETS[name]), count_parameters(PRESETS[name]),
                     what=f"the parameter count of {name}")


@EXERCISE.test("count_llama_parameters", points=1)
def count_equals_the_tensors_of_a_built_model(count_llama_parameters):
    expected = sum(param.numel() for param in Llama(SMALL).parameters())
    assert_equal(count_of(count_llama_parameters, SMALL), expected,
                 what="the count for a small GQA model (4 query heads, 2 KV heads)")


@EXERCISE.test("meta_to_hf_state_dict", points=3)
def converted_tensors_match_the_reference_conversion(meta_to_hf_state_dict):
    state_dict = small_model(0).state_dict()
    got = meta_to_hf_state_dict(dict(state_dict), SMALL.n_heads, SMALL.n_kv_heads)
    expected = to_hf_state_dict(state_dict, SMALL)
    assert_equal(sorted(got), sorted(expected), what="the names of the converted state dict")
    for name, tensor in expected.items():
        assert_tensor_close(got[name], tensor, atol=0, rtol=0, what=f"tensor {name!r}")


@EXERCISE.test("meta_to_hf_state_dict", points=1)
def input_state_dict_is_left_unchanged(meta_to_hf_state_dict):
    state_dict = small_model(1).state_dict()
    before = {name: tensor.clone() for name, tensor in state_dict.items()}
    meta_to_hf_state_dict(state_dict, SMALL.n_heads, SMALL.n_kv_heads)
    assert_equal(sorted(state_dict), sorted(before), what="the names of the input state dict after the call")
    for name, tensor in before.items():
        assert_tensor_close(state_dict[name], tensor, atol=0, rtol=0, what=f"input tensor {name!r} after the call")


@EXERCISE.test("llama_logits", points=3)
def logits_match_the_models_forward(llama_logits):
    model = small_model(2)
    tokens = torch.randint(0, SMALL.vocab_size, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(tokens).logits
        got = llama_logits(model, tokens)
    assert_tensor_close(got, expected, atol=1e-10, rtol=1e-10, what="the logits")


@EXERCISE.test("llama_logits", points=1)
def a_later_token_never_changes_earlier_logits(llama_logits):
    model = small_model(4)
    tokens = torch.randint(0, SMALL.vocab_size, (1, 9), generator=torch.Generator().manual_seed(5))
    changed = tokens.clone()
    changed[0, 6] = (tokens[0, 6] + 1) % SMALL.vocab_size
    with torch.no_grad():
        before, after = llama_logits(model, tokens), llama_logits(model, changed)
    assert_tensor_close(after[:, :6], before[:, :6], atol=1e-12, rtol=0,
                        what="the logits of positions 0-5 after changing token 6")


EXERCISE.references("count_llama_parameters", count_parameters)
EXERCISE.references("meta_to_hf_state_dict", to_hf_state_dict)
EXERCISE.references("llama_logits", Llama.forward)
