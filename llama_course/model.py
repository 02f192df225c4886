"""The Llama transformer (Llama 1, section 2.2; Llama 2, section 2.2).

Pre-norm blocks `h = x + attention(attention_norm(x))`, `out = h + feed_forward(ffn_norm(h))`, a final
RMSNorm, and an output projection that is NOT tied to the token embedding. No biases anywhere. Parameter
names follow Meta's reference checkpoints, so their state dicts load without renaming.

Initialisation (not stated in the papers): every weight matrix ~ N(0, 0.02^2), and the projections that
write into the residual stream (wo, w2) ~ N(0, (0.02 / sqrt(2 * n_layers))^2) so the residual stream's
variance does not grow with depth (GPT-2's scheme); norm gains start at 1 (LayerNorm biases at 0).

The config's architecture fields build the alternatives Llama chose against (chapters 2-4's ablations):
LayerNorm, post-norm blocks `h = norm(x + attention(x))` with no final norm, a GELU / ReLU FFN, learned
absolute positions added to the token embedding (`pos_embeddings`) or no positions at all, and RoPE with
interpolated positions. At Llama's choices the model is exactly the one described above.
"""

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import nn

from llama_course.config import ModelConfig
from llama_course.layers.attention import Attention, causal_mask
from llama_course.layers.cross_entropy import IGNORE_INDEX, linear_cross_entropy
from llama_course.layers.kv_cache import KVCache
from llama_course.layers.rmsnorm import make_norm
from llama_course.layers.rope import rope_angles
from llama_course.layers.swiglu import make_feed_forward

__all__ = ["IGNORE_INDEX", "CausalLMOutput", "Llama", "ScalarHead", "TransformerBlock"]


class CausalLMOutput(NamedTuple):
    logits: torch.Tensor | None  # (B, T, vocab_size), float32 (float64 for a float64 model); None with targets
    loss: torch.Tensor | None  # cross-entropy over targets != IGNORE_INDEX, when targets are given


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.post_norm = config.norm_placement == "post"
        self.attention_norm = make_norm(config.norm_type, config.dim, config.norm_eps)
        self.attention = Attention(config.dim, config.n_heads, config.n_kv_heads, config.attention_backend)
        self.ffn_norm = make_norm(config.norm_type, config.dim, config.norm_eps)
        self.feed_forward = make_feed_forward(config.ffn_activation, config.dim, config.hidden_dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        *,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.post_norm:  # Vaswani et al.: normalise the residual stream after each sub-layer
            attended, weights = self.attention(x, cos, sin, mask=mask, cache=cache, layer_idx=layer_idx,
                                               need_weights=need_weights)
            h = self.attention_norm(x + attended)
            return self.ffn_norm(h + self.feed_forward(h)), weights
        attended, weights = self.attention(
            self.attention_norm(x), cos, sin, mask=mask, cache=cache, layer_idx=layer_idx, need_weights=need_weights
        )
        h = x + attended
        return h + self.feed_forward(self.ffn_norm(h)), weights


class Llama(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        if config.position_encoding == "learned":
            self.pos_embeddings = nn.Embedding(config.max_seq_len, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        # A post-norm stream leaves the last block normalised already.
        self.norm = make_norm(config.norm_type, config.dim, config.norm_eps) if config.norm_placement == "pre" \
            else nn.Identity()
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """The initialisation documented in the module docstring (a no-op for tensors on the meta device)."""
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith("norm.bias"):
                param.zero_()
            elif name.endswith(("wo.weight", "w2.weight")):
                param.normal_(0.0, residual_std)
            else:
                param.normal_(0.0, std)

    def set_attention_backend(self, backend: str) -> None:
        """Switch every layer to another backend ("eager", "sdpa", "memory_efficient"); weights are unchanged."""
        self.config = dataclasses.replace(self.config, attention_backend=backend)  # validates the name
        for layer in self.layers:
            layer.attention.backend = backend

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to `max_len` (default: the context length) tokens."""
        max_len = max_len or self.config.max_seq_len
        weight = self.output.weight
        return KVCache(self.config.n_layers, batch_size, max_len, self.config.n_kv_heads, self.config.head_dim,
                       dtype=weight.dtype, device=weight.device)

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        targets: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        need_weights: bool = False,
        loss_reduction: str = "mean",
    ) -> CausalLMOutput:
        """Logits, or with `targets` the loss, for a batch of token ids (B, T).

        positions: (B, T) positions (RoPE's, or rows of the learned table); default `offset + arange(T)`
            (offset = cached tokens), or restarting at 0 in each document when `document_ids` is given.
        cache: a `KVCache` (from `new_cache`) that this call reads and extends, for incremental decoding.
        attention_mask: (B, T), 1 for real tokens and 0 for padding; padded keys are never attended.
        document_ids: (B, T) ids of packed documents; tokens attend only within their own document.
        targets: (B, T) labels aligned with the logits (targets[t] is the token that should follow tokens[:t+1]);
            IGNORE_INDEX (-100) marks positions without loss. The loss ("mean" over kept targets, or "sum" with
            `loss_reduction`) is then computed chunk by chunk with the output projection, never holding the
            full (B, T, vocab) logits, and `logits` is None.
        need_weights: also return each layer's attention weights (eager backend), as `model.last_attention`.
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, seq_len), got shape {tuple(tokens.shape)}")
        B, T = tokens.shape
        offset = cache.length if cache is not None else 0
        self._check_inputs(tokens, offset, targets, positions, attention_mask, document_ids, cache)
        if positions is None:
            positions = self._default_positions(T, offset, document_ids, tokens.device)
        compute_dtype = torch.promote_types(self.output.weight.dtype, torch.float32)
        cos = sin = None
        if self.config.position_encoding == "rope":
            scale = self.config.position_interpolation
            rope_positions = positions if scale == 1.0 else positions / scale  # Chen et al. (2023)
            cos, sin = rope_angles(rope_positions, self.config.head_dim, self.config.rope_theta, compute_dtype)
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B or 1, 1, T, head_dim/2), broadcast over heads
        mask = self._attention_mask(T, offset, attention_mask, document_ids, cache, tokens.device)

        h = self.tok_embeddings(tokens)
        if self.config.position_encoding == "learned":
            if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= self.config.max_seq_len):
                raise ValueError(f"positions [{int(positions.min())}, {int(positions.max())}] fall outside the "
                                 f"learned position table [0, {self.config.max_seq_len}); shorten the input")
            h = h + self.pos_embeddings(positions)
        weights = []
        for i, layer in enumerate(self.layers):
            h, w = layer(h, cos, sin, mask=mask, cache=cache, layer_idx=i, need_weights=need_weights)
            weights.append(w)
        if cache is not None:
            cache.advance(T)
        self.last_attention = weights if need_weights else None
        h = self.norm(h)
        if targets is not None:
            loss = linear_cross_entropy(h.flatten(0, 1), self.output.weight, targets.flatten(),
                                        reduction=loss_reduction)
            return CausalLMOutput(None, loss)
        return CausalLMOutput(self.output(h).to(compute_dtype), None)

    def _check_inputs(self, tokens, offset, targets, positions, attention_mask, document_ids, cache) -> None:
        B, T = tokens.shape
        limit = cache.max_len if cache is not None else self.config.max_seq_len
        if offset + T > limit:
            raise ValueError(
                f"sequence of {offset + T} tokens ({offset} cached + {T} new) exceeds the context of {limit}; "
                "truncate the input or build the model with a larger max_seq_len"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.config.vocab_size):
            bad = int(tokens.min()) if int(tokens.min()) < 0 else int(tokens.max())
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})")
        for name, tensor in (("targets", targets), ("positions", positions), ("attention_mask", attention_mask),
                             ("document_ids", document_ids)):
            if tensor is not None and tuple(tensor.shape) != (B, T):
                raise ValueError(f"{name} must have the shape of tokens {(B, T)}, got {tuple(tensor.shape)}")
        if document_ids is not None and cache is not None:
            raise ValueError("document_ids (packed training) cannot be combined with a KV cache (decoding)")

    @staticmethod
    def _default_positions(T: int, offset: int, document_ids: torch.Tensor | None, device) -> torch.Tensor:
        index = torch.arange(offset, offset + T, device=device)
        if document_ids is None:
            return index[None, :]  # (1, T)
        # Position = distance to the first token of the same document (documents are contiguous runs).
        starts = torch.ones_like(document_ids, dtype=torch.bool)
        starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
        start_index = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
        return index - start_index

    @staticmethod
    def _attention_mask(T, offset, attention_mask, document_ids, cache, device) -> torch.Tensor | None:
        """None for plain causal attention; otherwise a (B, 1, T, offset + T) bool mask (True = may attend)."""
        if cache is not None:
            if attention_mask is not None:
                cache.mark_valid(attention_mask.bool())
            key_valid = cache.key_valid[:, : offset + T]
        else:
            key_valid = None if attention_mask is None else attention_mask.bool()
        if key_valid is not None and bool(key_valid.all()):
            key_valid = None
        if key_valid is None and document_ids is None:
            return None
        mask = causal_mask(T, offset + T, offset, device)[None]  # (1, T, Tk)
        if key_valid is not None:
            # A padding query still attends itself, so no softmax row is empty (an all -inf row gives NaN).
            own = causal_mask(T, offset + T, offset, device) & ~causal_mask(T, offset + T, offset - 1, device)
            mask = mask & (key_valid[:, None, :] | own)
        if document_ids is not None:
            mask = mask & (document_ids[:, :, None] == document_ids[:, None, :])
        return mask[:, None]  # (B or 1, 1, T, Tk)


class ScalarHead(nn.Linear):
    """The regression head that replaces a Llama's output projection in a reward or value model: (dim -> 1).

    Llama 2 (section 3.2.2): "the classification head for next-token prediction is replaced with a regression
    head for outputting a scalar reward". No bias (it would cancel in every difference of two rewards) and zero
    weights, so an untrained head scores every sequence 0. `attach` puts one on a Llama in place.
    """

    def __init__(self, dim: int, *, dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__(dim, 1, bias=False, dtype=dtype, device=device)
        nn.init.zeros_(self.weight)

    @classmethod
    def attach(cls, backbone: Llama) -> Llama:
        """`backbone` with a new zero head as its `output` (same dtype and device as its weights); returned."""
        weight = backbone.tok_embeddings.weight
        backbone.output = cls(backbone.config.dim, dtype=weight.dtype, device=weight.device)
        return backbone
