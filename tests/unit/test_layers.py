"""Each layer against an independent float64 reference written from the formula (PAPER_FACTS.md)."""

import math

import pytest
import torch

from llama_course.layers.attention import ATTENTION_BACKENDS, causal_mask, repeat_kv
from llama_course.layers.rmsnorm import RMSNorm
from llama_course.layers.rope import (
    apply_rope_interleaved,
    apply_rope_rotate_half,
    permute_hf_to_meta,
    permute_meta_to_hf,
    rope_angles,
)
from llama_course.layers.swiglu import FeedForward, ffn_hidden_dim


def test_rmsnorm_matches_formula():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 16) * 7
    x64, w64 = x.double(), norm.weight.double()
    expected = x64 / torch.sqrt((x64**2).mean(-1, keepdim=True) + 1e-6) * w64
    torch.testing.assert_close(norm(x).double(), expected, rtol=1e-6, atol=1e-6)


def test_rmsnorm_computes_in_float32_for_bfloat16_input():
    norm = RMSNorm(8).to(torch.bfloat16)
    x = torch.full((1, 8), 300.0, dtype=torch.bfloat16)  # 300^2 * 8 summed in bf16 would lose digits
    out = norm(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), torch.ones(1, 8), rtol=0, atol=1e-2)


@pytest.mark.parametrize(("dim", "multiple_of", "mult", "expected"), [
    (4096, 256, None, 11008), (5120, 256, None, 13824), (6656, 256, None, 17920),
    (8192, 256, None, 22016), (8192, 4096, 1.3, 28672), (288, 32, None, 768),
])
def test_ffn_hidden_dim_rule(dim, multiple_of, mult, expected):
    assert ffn_hidden_dim(dim, multiple_of, mult) == expected


def test_ffn_hidden_dim_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple_of=0"):
        ffn_hidden_dim(64, 0)


def test_swiglu_matches_formula():
    torch.manual_seed(0)
    ffn = FeedForward(8, 24).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    gate = x @ ffn.w1.weight.T
    expected = ((gate / (1 + torch.exp(-gate))) * (x @ ffn.w3.weight.T)) @ ffn.w2.weight.T
    torch.testing.assert_close(ffn(x), expected)


def complex_rope_reference(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Meta's formulation: adjacent pairs as complex numbers times exp(i * m * theta_k), in float64."""
    hd = x.shape[-1]
    freqs = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    rotation = torch.polar(torch.ones(len(positions), hd // 2, dtype=torch.float64), positions[:, None] * freqs)
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], hd // 2, 2).contiguous())
    return torch.view_as_real(pairs * rotation).flatten(-2)


def test_interleaved_rope_matches_complex_reference():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 16, dtype=torch.float64)  # (B, H, T, hd)
    positions = torch.arange(5, 12, dtype=torch.float64)
    cos, sin = rope_angles(positions, 16)
    torch.testing.assert_close(apply_rope_interleaved(x, cos, sin), complex_rope_reference(x, positions))


def test_rotate_half_rope_matches_reference_on_halves():
    torch.manual_seed(0)
    x = torch.randn(4, 16, dtype=torch.float64)
    positions = torch.arange(4, dtype=torch.float64)
    cos, sin = rope_angles(positions, 16)
    # rotate_half pairs channel i with i + hd/2: interleave the halves, rotate as Meta does, undo.
    interleaved = torch.stack(x.chunk(2, dim=-1), dim=-1).flatten(-2)
    expected = complex_rope_reference(interleaved, positions).unflatten(-1, (-1, 2))
    expected = torch.cat((expected[..., 0], expected[..., 1]), dim=-1)
    torch.testing.assert_close(apply_rope_rotate_half(x, cos, sin), expected)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(32, dtype=torch.float64), torch.randn(32, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        cos, sin = rope_angles(torch.tensor([m, n], dtype=torch.float64), 32)
        rq = apply_rope_interleaved(q[None], cos[:1], sin[:1])
        rk = apply_rope_interleaved(k[None], cos[1:], sin[1:])
        return float((rq * rk).sum())

    for shift in (1, 17, 1000):
        assert score(3, 10) == pytest.approx(score(3 + shift, 10 + shift), abs=1e-9)
    assert score(3, 10) != pytest.approx(score(3, 11), abs=1e-3)


def test_meta_and_hf_rope_agree_after_permutation():
    torch.manual_seed(0)
    n_heads, head_dim, dim, T = 4, 8, 16, 6
    wq = torch.randn(n_heads * head_dim, dim, dtype=torch.float64)
    wk = torch.randn(n_heads * head_dim, dim, dtype=torch.float64)
    x = torch.randn(T, dim, dtype=torch.float64)
    cos, sin = rope_angles(torch.arange(T, dtype=torch.float64), head_dim)

    def scores(wq, wk, apply):
        q = (x @ wq.T).view(T, n_heads, head_dim).transpose(0, 1)
        k = (x @ wk.T).view(T, n_heads, head_dim).transpose(0, 1)
        return apply(q, cos, sin) @ apply(k, cos, sin).transpose(-1, -2)

    meta = scores(wq, wk, apply_rope_interleaved)
    hf = scores(permute_meta_to_hf(wq, n_heads), permute_meta_to_hf(wk, n_heads), apply_rope_rotate_half)
    torch.testing.assert_close(meta, hf)
    assert not torch.allclose(meta, scores(wq, wk, apply_rope_rotate_half))
    torch.testing.assert_close(permute_hf_to_meta(permute_meta_to_hf(wq, n_heads), n_heads), wq)


def test_rope_rejects_odd_head_dim():
    with pytest.raises(ValueError, match="head_dim=7"):
        rope_angles(torch.arange(3), 7)


def attention_reference(q, k, v, allowed):
    """float64 softmax attention with explicit per-head KV index h // group."""
    group = q.shape[1] // k.shape[1]
    out = torch.empty_like(q, dtype=torch.float64)
    for h in range(q.shape[1]):
        kh, vh = k[:, h // group].double(), v[:, h // group].double()
        scores = q[:, h].double() @ kh.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~allowed[:, 0], float("-inf"))
        out[:, h] = scores.softmax(-1) @ vh
    return out


@pytest.mark.parametrize("backend", sorted(ATTENTION_BACKENDS))
@pytest.mark.parametrize(("n_heads", "n_kv_heads", "q_len", "offset"), [(4, 4, 7, 0), (6, 2, 5, 3), (8, 1, 1, 9)])
def test_attention_backends_match_reference(backend, n_heads, n_kv_heads, q_len, offset):
    torch.manual_seed(0)
    kv_len = offset + q_len
    q = torch.randn(2, n_heads, q_len, 8)
    k, v = torch.randn(2, n_kv_heads, kv_len, 8), torch.randn(2, n_kv_heads, kv_len, 8)
    out, _ = ATTENTION_BACKENDS[backend](q, k, v, offset=offset, mask=None)
    allowed = causal_mask(q_len, kv_len, offset)[None, None].expand(2, 1, -1, -1)
    torch.testing.assert_close(out.double(), attention_reference(q, k, v, allowed), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", sorted(ATTENTION_BACKENDS))
def test_attention_backends_honour_explicit_mask(backend):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    allowed = causal_mask(6, 6, 0)[None, None].repeat(2, 1, 1, 1)
    allowed[0, :, 3:, :2] = False  # e.g. a document boundary in the first sequence
    out, _ = ATTENTION_BACKENDS[backend](q, k, v, offset=0, mask=allowed)
    torch.testing.assert_close(out.double(), attention_reference(q, k, v, allowed), rtol=1e-5, atol=1e-5)


def test_eager_returns_weights_that_sum_to_one_and_respect_causality():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    _, weights = ATTENTION_BACKENDS["eager"](q, k, v, offset=0, mask=None, need_weights=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 5))
    assert float(weights.triu(1).abs().max()) == 0.0
    with pytest.raises(ValueError, match="use attention_backend='eager'"):
        ATTENTION_BACKENDS["sdpa"](q, k, v, need_weights=True)


def test_repeat_kv_is_repeat_interleave():
    x = torch.arange(2 * 3).view(1, 2, 3, 1).float()
    repeated = repeat_kv(x, 3)
    assert repeated[0, :, 0, 0].tolist() == [0, 0, 0, 3, 3, 3]


def test_interleaved_rope_compiles_without_a_graph_break_and_matches_eager():
    x = torch.randn(2, 8, 4, 16).transpose(1, 2)  # (B, heads, T, head_dim) as attention passes it: not contiguous
    cos, sin = rope_angles(torch.arange(8), 16)
    explained = torch._dynamo.explain(apply_rope_interleaved)(x, cos, sin)
    assert explained.graph_break_count == 0
    torch._dynamo.reset()
    compiled = torch.compile(apply_rope_interleaved, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, cos, sin), apply_rope_interleaved(x, cos, sin), rtol=0, atol=0)
