"""Autoregressive generation with a KV cache: greedy, temperature, top-k and top-p (nucleus) sampling.

Prompts of different lengths are LEFT-padded into one batch, so every sequence's next token sits in the
last column. Padding must not shift RoPE positions, so each sequence's positions count its real tokens
only, and padded keys are masked out of attention.

On a CPU, decoding multiplies by the output projection's weight in a faster layout (`cpu_decoding_layout`).
"""

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from llama_course.model import Llama


def check_sampling(temperature: float, top_k: int | None = None, top_p: float | None = None) -> None:
    """Raise a ValueError naming a sampling setting out of range (NaN and infinity included)."""
    if not 0 <= temperature < math.inf:
        raise ValueError(f"temperature={temperature} must be a finite number >= 0 (0 means greedy)")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k} must be >= 1 or None")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1] or None")


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of `logits` (B, V): argmax when temperature == 0, otherwise sample from
    softmax(logits / temperature) restricted to the top_k most likely tokens and/or the smallest set whose
    probability reaches top_p."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first token always stays).
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (tokens, attention_mask), both (B, max_len); mask is 1 on real tokens."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS); got an empty prompt list or prompt")
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return tokens, mask


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """RoPE positions of a left-padded batch: 0, 1, 2, ... over each row's real tokens (padding gets 0)."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


@contextlib.contextmanager
def cpu_decoding_layout(head: nn.Linear) -> Iterator[None]:
    """A block of inference calls of the bias-free output projection `head` with fixed weights (one decoding
    loop), which on a CPU multiply by a (dim, vocab) copy of the weight.

    Each decoding step multiplies ONE hidden vector by the whole (vocab, dim) weight, which is bound by memory
    bandwidth, and PyTorch's CPU BLAS (MKL) streams a row-major weight used as `weight.T` at well under half the
    speed it streams the same numbers stored as (dim, vocab): measured on 2 AMD EPYC cores, vocab 32000 x dim
    288, 4.5 ms against 1.8 ms per token, the single largest cost of a decoding step. The copy is made on entry
    and freed on exit; it costs vocab x dim memory while it lives (for Llama 2 7B, 262 MB next to 13.5 GB of
    weights). Logits equal `F.linear`'s up to the order of float rounding; with autograd on, the parameter
    itself is used, so its gradient flows. The head's parameter, state dict and training matmul never change.
    """
    weight = head.weight
    if weight.device.type != "cpu" or isinstance(weight, DTensor) or head.bias is not None or "forward" in vars(head):
        yield  # GPU BLAS has no such penalty; a sharded weight has no local copy; a nested block reuses the copy
        return
    transposed = weight.detach().T.contiguous()  # (dim, vocab)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, head.weight) if torch.is_grad_enabled() else x @ transposed

    head.forward = forward  # this instance only, for this block
    try:
        yield
    finally:
        del head.forward


@torch.no_grad()
def decode(
    model: Llama,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    choose: Callable[[torch.Tensor], torch.Tensor],
    *,
    eos_id: int | None = None,
    pad_id: int = 0,
    use_cache: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The decoding loop: per step, yield the logits of every sequence's next token (B, V) and the token
    `choose(logits)` picked, (B,), with `pad_id` in place of it for sequences that already produced `eos_id`.

    Stops after `max_new_tokens` steps or once every sequence has produced `eos_id`. With `use_cache=False`
    each step recomputes the whole prefix (the slow baseline that the KV cache removes).
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if eos_id is not None and pad_id == eos_id:
        raise ValueError(f"pad_id={pad_id} equals eos_id: padding would read as end of sequence; use another id")
    device = model.output.weight.device
    tokens, mask = left_pad(prompts, pad_id, device)
    total = tokens.shape[1] + max_new_tokens
    if total > model.config.max_seq_len:
        raise ValueError(
            f"prompt ({tokens.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds the "
            f"model's context of {model.config.max_seq_len}"
        )
    positions = positions_from_mask(mask)
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    cache = model.new_cache(len(prompts), total) if use_cache else None
    step_tokens, step_positions, step_mask = tokens, positions, mask
    with cpu_decoding_layout(model.output):
        for _ in range(max_new_tokens):
            logits = model(step_tokens, positions=step_positions, attention_mask=step_mask, cache=cache).logits[:, -1]
            next_token = choose(logits).masked_fill(finished, pad_id)
            yield logits, next_token
            if eos_id is not None:
                finished |= next_token == eos_id
                if bool(finished.all()):
                    return
            next_position = positions[:, -1:] + 1
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            positions = torch.cat([positions, next_position], dim=1)
            mask = torch.cat([mask, torch.ones_like(next_position)], dim=1)
            if use_cache:
                step_tokens, step_positions, step_mask = next_token[:, None], next_position, None
            else:
                step_tokens, step_positions, step_mask = tokens, positions, mask


def generate_stream(
    model: Llama,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    seed: int | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every sequence, (B,), step by step, sampled as `sample_next_token` says (greedy by
    default); finished sequences yield `pad_id`. See `decode` for when it stops and `use_cache`."""
    check_sampling(temperature, top_k, top_p)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model.output.weight.device).manual_seed(seed)

    def choose(logits: torch.Tensor) -> torch.Tensor:
        return sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)

    for _, token in decode(model, prompts, max_new_tokens, choose, eos_id=eos_id, pad_id=pad_id, use_cache=use_cache):
        yield token


def generate(model: Llama, prompts: Sequence[Sequence[int]], max_new_tokens: int, **kwargs) -> list[list[int]]:
    """The new tokens of each prompt (its EOS included when produced), as lists; see `generate_stream`."""
    steps = list(generate_stream(model, prompts, max_new_tokens, **kwargs))
    eos_id = kwargs.get("eos_id")
    outputs = []
    for row in range(len(prompts)):
        out = []
        for step in steps:
            token = int(step[row])
            out.append(token)
            if token == eos_id:
                break
        outputs.append(out)
    return outputs
