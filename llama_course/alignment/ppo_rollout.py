"""PPO's rollouts (Llama 2, section 3.2.3): sampled responses, their log-probabilities, values and RM inputs.

A rollout is one batch of prompts, each with one response sampled from the policy, stored as one tensor
per quantity so every later pass reads the same tokens:

    tokens (B, P + L) = [ left-padded prompt (width P) | response, right-padded after its EOS (width L) ]

Pitfalls this module is built around (PAPER_FACTS.md, "known pitfalls"):
- Left padding shifts nothing: RoPE positions count each row's real tokens (`positions_from_mask`) and
  padded keys are masked, in sampling and in every later forward pass alike.
- The pad token is not the EOS token (`generation.decode` refuses it), so "ended" means an EOS was sampled.
- Log-probabilities are those of the distribution sampled from, softmax(logits / T): they are recorded
  during sampling (`sample_with_logprobs`, with the KV cache) and equal a fresh forward pass
  (`response_logprobs`) up to rounding; no top-k / top-p, which would change the distribution.
- A response cut at `max_new_tokens` has no EOS: `reward_model_inputs` appends one so the reward model
  reads its score where it was trained to, and the trainer decides how to treat it (`ppo_train`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from llama_course.alignment.ppo import entropy, token_logprobs
from llama_course.alignment.reward import RewardModel
from llama_course.chat import encode_dialog
from llama_course.generation import decode, left_pad, positions_from_mask, sample_next_token
from llama_course.model import Llama, ScalarHead
from llama_course.tokenizer import Tokenizer


@dataclass
class Rollout:
    """Prompts with one sampled response each; see the module docstring for the layout of `tokens`."""

    prompts: list[str]
    tokens: torch.Tensor  # (B, P + L) long
    attention_mask: torch.Tensor  # (B, P + L) long, 1 on real prompt and response tokens
    prompt_width: int  # P
    logprobs: torch.Tensor  # (B, L) log softmax(logits / T) of each sampled token; 0 on padding
    entropy: torch.Tensor  # (B, L) entropy of the sampled distribution at each response token; 0 on padding
    ended: torch.Tensor  # (B,) bool: the response ends with EOS (False: cut at max_new_tokens)

    @property
    def responses(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_width :]

    @property
    def response_mask(self) -> torch.Tensor:
        return self.attention_mask[:, self.prompt_width :]

    @property
    def positions(self) -> torch.Tensor:
        return positions_from_mask(self.attention_mask)

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, rows: Sequence[int] | torch.Tensor) -> Rollout:
        """The rollout of `rows` only, without the columns that are padding in every one of them."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        mask = self.attention_mask[rows]
        start = int(mask[:, : self.prompt_width].any(dim=0).nonzero()[0])  # every prompt has a BOS at least
        length = int(mask[:, self.prompt_width :].sum(dim=1).max())
        end = self.prompt_width + length
        return Rollout([self.prompts[int(i)] for i in rows], self.tokens[rows, start:end], mask[:, start:end],
                       self.prompt_width - start, self.logprobs[rows, :length], self.entropy[rows, :length],
                       self.ended[rows])

    def response_texts(self, tokenizer: Tokenizer) -> list[str]:
        """Each response decoded, EOS and padding dropped, stripped."""
        return [tokenizer.decode([int(t) for t, real in zip(row, keep, strict=True) if real and t != tokenizer.eos_id]
                                 ).strip() for row, keep in zip(self.responses, self.response_mask, strict=True)]


def prompt_token_ids(tokenizer: Tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Each prompt as a single user turn of the Llama 2-Chat format, `<s>[INST] prompt [/INST]`."""
    return [encode_dialog(tokenizer, [{"role": "user", "content": prompt}]).ids for prompt in prompts]


@torch.no_grad()
def sample_with_logprobs(model: Llama, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float,
                         *, eos_id: int, pad_id: int, seed: int) -> tuple[list[list[int]], list[torch.Tensor],
                                                                          list[torch.Tensor]]:
    """Sample one response per prompt with the KV cache; return the tokens, their log-probabilities and the
    entropies of the sampled distributions, per row, each up to and including its EOS.

    The loop of `generate` (`generation.decode`: left padding, positions counting real tokens, one cached
    step per token), keeping what PPO needs from each step's logits.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if eos_id == pad_id:
        raise ValueError(f"pad_id={pad_id} equals eos_id: a padded row would read as ended; use another pad id")
    device = model.output.weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    for logits, token in decode(model, prompts, max_new_tokens,
                                lambda logits: sample_next_token(logits, temperature=temperature, generator=generator),
                                eos_id=eos_id, pad_id=pad_id):
        steps.append((token, token_logprobs(logits, token, temperature), entropy(logits, temperature), ~finished))
        finished = finished | (token == eos_id)
    chosen, logprobs, entropies, alive = (torch.stack(column, dim=1).cpu() for column in zip(*steps, strict=True))
    lengths = alive.sum(dim=1).tolist()
    return ([chosen[row, :n].tolist() for row, n in enumerate(lengths)],
            [logprobs[row, :n] for row, n in enumerate(lengths)], [entropies[row, :n] for row, n in enumerate(lengths)])


def assemble_rollout(prompts: Sequence[str], prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                     logprobs: Sequence[torch.Tensor], entropies: Sequence[torch.Tensor], *, eos_id: int,
                     pad_id: int) -> Rollout:
    """One `Rollout` from per-row lists (left-padded prompts, right-padded responses)."""
    if any(len(response) == 0 for response in responses):
        raise ValueError("every response needs at least one token")
    prompt_tokens, prompt_mask = left_pad(prompt_ids, pad_id)
    width = max(len(response) for response in responses)
    response_tokens = torch.full((len(responses), width), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(responses), width), dtype=torch.long)
    dtype = logprobs[0].dtype
    response_logprobs = torch.zeros((len(responses), width), dtype=dtype)
    response_entropy = torch.zeros((len(responses), width), dtype=dtype)
    for row, (response, row_logprobs, row_entropy) in enumerate(zip(responses, logprobs, entropies, strict=True)):
        n = len(response)
        response_tokens[row, :n] = torch.as_tensor(list(response), dtype=torch.long)
        response_mask[row, :n] = 1
        response_logprobs[row, :n] = row_logprobs
        response_entropy[row, :n] = row_entropy
    ended = torch.tensor([response[-1] == eos_id for response in responses])
    return Rollout(list(prompts), torch.cat([prompt_tokens, response_tokens], dim=1),
                   torch.cat([prompt_mask, response_mask], dim=1), prompt_tokens.shape[1], response_logprobs,
                   response_entropy, ended)


def sample_rollout(policy: Llama, tokenizer: Tokenizer, prompts: Sequence[str], *, temperature: float,
                   max_new_tokens: int, seed: int, chunk_size: int = 16, first_chunk: int = 0) -> Rollout:
    """Sample one response to each prompt in chunks of `chunk_size` rows; chunk c uses seed `seed + c`.

    `first_chunk` numbers the chunks globally: a process holding rows [k * chunk_size, ...) of a batch shared
    by several processes samples exactly what one process holding the whole batch samples.
    """
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt to sample a response to")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    policy.eval()
    prompt_ids = prompt_token_ids(tokenizer, prompts)
    responses, logprobs, entropies = [], [], []
    for index, start in enumerate(range(0, len(prompts), chunk_size)):
        chunk = sample_with_logprobs(policy, prompt_ids[start : start + chunk_size], max_new_tokens, temperature,
                                     eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, seed=seed + first_chunk + index)
        responses += chunk[0]
        logprobs += chunk[1]
        entropies += chunk[2]
    return assemble_rollout(prompts, prompt_ids, responses, logprobs, entropies, eos_id=tokenizer.eos_id,
                            pad_id=tokenizer.pad_id)


def response_logits(model: nn.Module, rollout: Rollout) -> torch.Tensor:
    """One forward pass over the whole rollout; the outputs that predict each response token: (B, L, ...).

    The output at position t predicts token t + 1, so the response's L tokens are predicted by positions
    P - 1 ... P + L - 2 (the value of the state before a token is read at the same place). `model` is a
    `Llama` (logits) or a `ValueModel` (values), possibly wrapped by DDP.
    """
    device = next(model.parameters()).device
    outputs = model(rollout.tokens.to(device), positions=rollout.positions.to(device),
                    attention_mask=rollout.attention_mask.to(device))
    outputs = outputs.logits if hasattr(outputs, "logits") else outputs
    width = rollout.responses.shape[1]
    return outputs[:, rollout.prompt_width - 1 : rollout.prompt_width - 1 + width]


def response_logprobs(model: nn.Module, rollout: Rollout, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities, entropies) (B, L) of the rollout's response tokens under `model` at `temperature`."""
    logits = response_logits(model, rollout)
    tokens = rollout.responses.to(logits.device)
    return token_logprobs(logits, tokens, temperature), entropy(logits, temperature)


class ValueModel(nn.Module):
    """The critic: a Llama whose output projection is a scalar head (`model.ScalarHead`, as a reward model's)
    read at EVERY position, V(s_t).

    Llama 2 does not say how its critic starts. Ours starts from a reward model's backbone (it already
    reads responses) with a new zero head, so every initial value is 0, the mean of the whitened score.
    """

    def __init__(self, backbone: Llama) -> None:
        super().__init__()
        self.backbone = ScalarHead.attach(backbone)

    @classmethod
    def from_reward_model(cls, reward_model: RewardModel) -> ValueModel:
        """A critic initialised from a copy of `reward_model`'s backbone, with a zero head."""
        return cls(copy.deepcopy(reward_model.backbone))

    def forward(self, tokens: torch.Tensor, *, positions: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Values (B, T) of a padded batch (positions and mask as for `Llama.forward`)."""
        return self.backbone(tokens, positions=positions, attention_mask=attention_mask).logits.squeeze(-1)


def reward_model_inputs(rollout: Rollout, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, mask) (B, P + L + 1) for a `RewardModel`: each prompt and response, ending with EOS.

    A response cut at the length limit gets an EOS appended, so the score is read at an EOS as in training.
    """
    tokens = torch.cat([rollout.tokens, torch.full_like(rollout.tokens[:, :1], pad_id)], dim=1)
    mask = torch.cat([rollout.attention_mask, torch.zeros_like(rollout.attention_mask[:, :1])], dim=1)
    end = rollout.prompt_width + rollout.response_mask.sum(dim=1)  # (B,) first column after each response
    cut = (~rollout.ended).nonzero().flatten()
    tokens[cut, end[cut]] = eos_id
    mask[cut, end[cut]] = 1
    return tokens, mask


__all__ = [
    "Rollout",
    "ValueModel",
    "assemble_rollout",
    "prompt_token_ids",
    "response_logits",
    "response_logprobs",
    "reward_model_inputs",
    "sample_rollout",
    "sample_with_logprobs",
]
