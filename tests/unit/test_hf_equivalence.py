"""llama_course against Hugging Face transformers: same weights, same logits, same greedy tokens (chapter 7).

transformers is the trusted reference here: both directions of the conversion (export ours, import theirs)
must give logits within 1e-5 in float32 with eager attention, on a tiny random model WITH grouped-query heads.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from llama_course.config import ModelConfig  # noqa: E402
from llama_course.generation import generate  # noqa: E402
from llama_course.interop import (  # noqa: E402
    from_hf_state_dict,
    hf_config_from_model_config,
    load_hf_checkpoint,
    model_config_from_hf,
    save_hf_checkpoint,
    to_hf_state_dict,
)
from llama_course.model import Llama  # noqa: E402

# GQA (4 query heads share 2 KV heads), a non-default RoPE base and an FFN width that needs the rounding rule.
CONFIG = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=16,
                     norm_eps=1e-5, rope_theta=5000.0, max_seq_len=64, attention_backend="eager")
TOLERANCE = 1e-5


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights far from the 0.02 initialisation (and non-unit norm gains) so a wrong conversion shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.15)


def _ours(seed: int = 0, backend: str = "eager") -> Llama:
    model = Llama(ModelConfig(**{**CONFIG.to_dict(), "attention_backend": backend})).eval()
    _randomize(model, seed)
    return model


def _hf_model(config: ModelConfig, attn: str = "eager") -> "transformers.LlamaForCausalLM":
    hf_config = transformers.LlamaConfig(**hf_config_from_model_config(config))
    return transformers.LlamaForCausalLM._from_config(hf_config, attn_implementation=attn).eval()


def _tokens(batch: int = 3, length: int = 23, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@torch.no_grad()
def test_exported_weights_give_transformers_the_same_logits(backend):
    ours = _ours(backend=backend)
    hf = _hf_model(CONFIG, attn=backend)
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), CONFIG), strict=True)
    tokens = _tokens()
    expected = ours(tokens).logits
    assert expected.abs().max() > 1.0  # logits large enough that a 1e-5 agreement means something
    assert (hf(tokens).logits - expected).abs().max() <= TOLERANCE


@torch.no_grad()
def test_rope_permutation_is_what_makes_the_export_match():
    ours = _ours()
    renamed_only = {name: tensor for name, tensor in to_hf_state_dict(ours.state_dict(), CONFIG).items()}
    for i in range(CONFIG.n_layers):
        renamed_only[f"model.layers.{i}.self_attn.q_proj.weight"] = ours.layers[i].attention.wq.weight
        renamed_only[f"model.layers.{i}.self_attn.k_proj.weight"] = ours.layers[i].attention.wk.weight
    hf = _hf_model(CONFIG)
    hf.load_state_dict(renamed_only, strict=True)
    tokens = _tokens()
    assert (hf(tokens).logits - ours(tokens).logits).abs().max() > 1e-2


@torch.no_grad()
def test_random_transformers_model_imports_with_the_same_logits():
    hf_config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
        vocab_size=101, rms_norm_eps=1e-6, max_position_embeddings=128, rope_theta=20000.0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(3)
    hf = transformers.LlamaForCausalLM._from_config(hf_config, attn_implementation="eager").eval()
    _randomize(hf, seed=4)
    config = model_config_from_hf(hf_config.to_dict(), attention_backend="eager")
    assert (config.n_heads, config.n_kv_heads, config.hidden_dim, config.rope_theta) == (8, 2, 160, 20000.0)
    ours = Llama(config).eval()
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), config), strict=True)
    tokens = torch.randint(0, 101, (2, 31), generator=torch.Generator().manual_seed(5))
    assert (ours(tokens).logits - hf(tokens).logits).abs().max() <= TOLERANCE


@torch.no_grad()
def test_saved_folder_loads_with_auto_model_for_causal_lm(tmp_path):
    ours = _ours()
    save_hf_checkpoint(ours, tmp_path / "export")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", attn_implementation="eager").eval()
    assert isinstance(hf, transformers.LlamaForCausalLM)
    assert hf.config.intermediate_size == CONFIG.hidden_dim and hf.config.num_key_value_heads == 2
    tokens = _tokens()
    assert (hf(tokens).logits - ours(tokens).logits).abs().max() <= TOLERANCE


@torch.no_grad()
def test_folder_saved_by_transformers_loads_including_sharded_safetensors(tmp_path):
    hf = _hf_model(CONFIG)
    _randomize(hf, seed=6)
    hf.save_pretrained(tmp_path / "single")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    tokens = _tokens()
    expected = hf(tokens).logits
    for folder in ("single", "sharded"):
        ours = load_hf_checkpoint(tmp_path / folder, attention_backend="eager").eval()
        assert (ours(tokens).logits - expected).abs().max() <= TOLERANCE


def _hf_greedy(hf, tokens: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int) -> list[list[int]]:
    out = hf.generate(tokens, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False,
                      eos_token_id=None, pad_token_id=0)
    return out[:, tokens.shape[1]:].tolist()


@torch.no_grad()
def test_greedy_generation_matches_transformers_generate():
    ours = _ours(seed=7)
    hf = _hf_model(CONFIG)
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), CONFIG))
    prompt = _tokens(batch=1, length=6, seed=8)
    ours_tokens = generate(ours, prompt.tolist(), 30, pad_id=0)
    assert ours_tokens == _hf_greedy(hf, prompt, torch.ones_like(prompt), 30)
    assert len(set(ours_tokens[0])) > 3  # not a degenerate repetition of one token


@torch.no_grad()
def test_left_padded_batch_generation_matches_transformers_generate():
    ours = _ours(seed=9)
    hf = _hf_model(CONFIG)
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), CONFIG))
    generator = torch.Generator().manual_seed(10)
    prompts = [torch.randint(1, CONFIG.vocab_size, (n,), generator=generator).tolist() for n in (7, 2, 4)]
    width = max(len(p) for p in prompts)
    tokens = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    assert generate(ours, prompts, 20, pad_id=0) == _hf_greedy(hf, tokens, mask, 20)
