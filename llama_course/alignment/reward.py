"""Reward models (Llama 2, section 3.2.2): a scalar head on the Llama backbone and the margin ranking loss.

"The model architecture and hyper-parameters are identical to those of the pretrained language models,
except that the classification head for next-token prediction is replaced with a regression head for
outputting a scalar reward." `RewardModel` does exactly that: the backbone's output projection (dim ->
vocabulary) becomes a (dim -> 1) projection, and the score of a sequence is that projection at the
response's final token, its EOS (appended at training and at inference alike, so the score always reads
the same position; PAPER_FACTS.md, known pitfalls).

`RewardModel(..., head="likelihood")` is this course's departure, for RMs asked to rank a policy's own answers:
it keeps the next-token head and scores a response by the log-probability the backbone gives its tokens after
the prompt (its EOS included), summed, then standardised, `(log p - offset) / scale` (`calibrate`: the median score
and the median gap within its training pairs, so the margins and the sigmoid mean what they mean for a scalar
head). Untrained, that is the backbone's own judgement of the answer, which a new zero-initialised scalar head
first has to relearn from pairs; training moves the backbone with the same loss.

The loss is the binary ranking loss with a margin (Llama 2, Eq. 2):

    L = -log(sigmoid(r(x, y_c) - r(x, y_r) - m(r)))

where the margin m(r) grows with the annotators' preference strength (Table 27, `MARGINS`; it and the other
constants of the paper live in `llama_course.paper`). For PPO the two
RMs' scores are combined safety-first and whitened (section 3.2.3): `combine_rewards` and `whiten`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llama_course.alignment.ppo import token_logprobs
from llama_course.alignment.reward_data import answer_start, encode_response, pad_right
from llama_course.config import ModelConfig
from llama_course.generation import positions_from_mask
from llama_course.model import Llama, ScalarHead
from llama_course.paper import MARGINS, SAFETY_THRESHOLD, STRENGTHS
from llama_course.tokenizer import Tokenizer
from llama_course.training.trainer import LossFunction, LossSum


def margin_table(name: str) -> dict[str, float]:
    """The margins of Table 27 named `name` ("none", "small" or "large"), keyed by strength."""
    if name not in MARGINS:
        raise ValueError(f"margin={name!r} is unknown; choose one of {tuple(MARGINS)} (Llama 2, Table 27)")
    return MARGINS[name]


def margins_for(strength_index: torch.Tensor, margin: str) -> torch.Tensor:
    """The margin of each pair, (N,) float, from its strength's index into `STRENGTHS`."""
    table = torch.tensor([margin_table(margin)[strength] for strength in STRENGTHS], dtype=torch.float64)
    strength_index = torch.as_tensor(strength_index)
    outside = (strength_index < 0) | (strength_index >= len(STRENGTHS))
    if bool(outside.any()):
        raise ValueError(f"strength indices {strength_index[outside].unique().tolist()} are outside "
                         f"[0, {len(STRENGTHS)}): they index {STRENGTHS}")
    return table.to(strength_index.device)[strength_index]


def margin_ranking_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float = 0.0
                        ) -> torch.Tensor:
    """Per-pair loss `-log(sigmoid(r_chosen - r_rejected - margin))` (Llama 2, Eq. 2); (N,) like the scores.

    Computed as `softplus(-(r_c - r_r - m))`, which equals the formula and stays finite for any score gap.
    """
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen {tuple(r_chosen.shape)} and r_rejected {tuple(r_rejected.shape)} must match")
    margin = torch.as_tensor(margin, dtype=r_chosen.dtype, device=r_chosen.device)
    if margin.dim() and margin.shape != r_chosen.shape:
        raise ValueError(f"margin {tuple(margin.shape)} must be a number or one margin per pair, shaped like the "
                         f"scores {tuple(r_chosen.shape)} (a (N, 1) margin would broadcast to (N, N))")
    return F.softplus(-(r_chosen - r_rejected - margin))


HEADS = ("scalar", "likelihood")
# A judge of answers: (prompts, responses) -> (N,) scores. Reward models are one (`rejection.reward_model_scorer`);
# a true reward, where one is known, is another.
Scorer = Callable[[Sequence[str], Sequence[str]], torch.Tensor]


class RewardModel(nn.Module):
    """A Llama that scores one sequence each: the paper's scalar regression head, or the answer's likelihood.

    `backbone` is a `Llama` whose weights initialise the RM (the SFT or base model). With `head="scalar"` its
    `output` projection is replaced, in place, by a `model.ScalarHead` (dim -> 1, no bias, zero), so an
    untrained RM scores every response 0 (0.5 after the sigmoid). `eos_id` is the token the score is read at. With
    `head="likelihood"` the backbone stays whole and the score is the summed log-probability of the answer's
    tokens, standardised by `offset` and `scale` (0 and 1 until `calibrate`), which needs each row's `answer_start`.
    """

    def __init__(self, backbone: Llama, eos_id: int, head: str = "scalar") -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head={head!r} is unknown; choose one of {HEADS}")
        if head == "scalar":
            ScalarHead.attach(backbone)
        self.backbone, self.eos_id, self.head = backbone, eos_id, head
        self.offset, self.scale = 0.0, 1.0  # a likelihood head's standardisation (`calibrate`)

    @property
    def config(self) -> ModelConfig:
        return self.backbone.config

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor,
                answer_start: torch.Tensor | None = None) -> torch.Tensor:
        """Raw scores (B,) of a padded batch: tokens (B, T), attention_mask (B, T) with 1 on real tokens.

        Padding may sit on either side (or both): RoPE positions count real tokens only and padded keys are
        masked, so a sequence's score does not depend on its padding or on the other sequences of the batch.
        Each row's last real token must be `eos_id`: the score is read there. A likelihood head also needs
        `answer_start` (B,), the index in each padded row of the answer's first token (the scalar head ignores it).
        """
        if attention_mask.shape != tokens.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match tokens {tuple(tokens.shape)}")
        mask = attention_mask.long()
        if bool((mask.sum(dim=1) == 0).any()):
            raise ValueError(f"rows {(mask.sum(dim=1) == 0).nonzero().flatten().tolist()} have no real token")
        T = tokens.shape[1]
        last = (mask * torch.arange(1, T + 1, device=tokens.device)).argmax(dim=1)  # (B,) last real position
        final_tokens = tokens.gather(1, last[:, None]).squeeze(1)
        missing = (final_tokens != self.eos_id).nonzero().flatten().tolist()
        if missing:
            raise ValueError(
                f"rows {missing} do not end with EOS (id {self.eos_id}) but with {final_tokens[missing].tolist()}: "
                "the reward is read at the response's EOS; append it (encode_response does)"
            )
        if self.head == "likelihood" and answer_start is None:
            raise ValueError("a likelihood RM scores the answer's tokens: pass answer_start (B,), the index of each "
                             "row's first answer token (reward_data.answer_start)")
        positions = positions_from_mask(mask)  # counts real tokens: right or left padding alike
        outputs = self.backbone(tokens, positions=positions, attention_mask=mask).logits  # (B, T, 1 or V)
        if self.head == "scalar":
            return outputs.squeeze(-1).gather(1, last[:, None]).squeeze(1)
        logprobs = token_logprobs(outputs[:, :-1], tokens[:, 1:], temperature=1.0)  # of token t + 1
        index = torch.arange(1, T, device=tokens.device)
        in_answer = (index[None, :] >= answer_start.to(tokens.device)[:, None]) & (mask[:, 1:] > 0)
        return ((logprobs * in_answer).sum(dim=1).to(outputs.dtype) - self.offset) / self.scale


@torch.no_grad()
def calibrate(model: RewardModel, tokenizer: Tokenizer, prompts: Sequence[str], chosen: Sequence[str],
              rejected: Sequence[str]) -> None:
    """Set a likelihood head's `offset` to the median of its log-probabilities of the answers of these pairs and its
    `scale` to the median gap between the two answers of a pair, so that the loss, which compares the two, sees
    gaps of about 1 as a scalar head's logits do. Medians, because answers range from a few nats to hundreds."""
    if model.head != "likelihood":
        raise ValueError(f"only a likelihood head is calibrated; this RM has a {model.head} head")
    model.offset, model.scale = 0.0, 1.0
    was_training = model.training
    model.eval()
    scores = [score_responses(model, tokenizer, prompts, side).double() for side in (chosen, rejected)]
    model.train(was_training)
    gap = float((scores[0] - scores[1]).abs().median()) if len(prompts) else 0.0
    if not gap > 0:
        raise ValueError(f"calibrating needs pairs whose answers' log-probabilities differ; the median gap of these "
                         f"{len(prompts)} pairs is {gap}")
    model.offset, model.scale = float(torch.cat(scores).median()), gap


@torch.no_grad()
def score_responses(model: RewardModel, tokenizer: Tokenizer, prompts: Sequence[str], responses: Sequence[str],
                    batch_size: int = 64) -> torch.Tensor:
    """Raw scores (N,) of `responses[i]` to `prompts[i]`, each encoded as one chat turn ending with EOS.

    Apply `torch.sigmoid` for the paper's [0, 1] scale. The model is used as it is (call `.eval()` first).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses: give one response per prompt")
    device = model.backbone.tok_embeddings.weight.device
    scores = []
    for start in range(0, len(prompts), batch_size):
        rows = list(zip(prompts[start : start + batch_size], responses[start : start + batch_size], strict=True))
        ids, mask = pad_right([encode_response(tokenizer, prompt, response) for prompt, response in rows],
                              tokenizer.pad_id)
        starts = torch.tensor([answer_start(tokenizer, prompt) for prompt, _ in rows])
        scores.append(model(ids.to(device), mask.to(device), starts.to(device)).float().cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


def pairwise_scores(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected), each (N,), of a batch of encoded pairs (`reward_data.encode_preferences`).

    Both sides run as one batch of 2N sequences, cut to the longest real sequence (rows are right-padded).
    """
    ids = torch.cat([batch["chosen_ids"], batch["rejected_ids"]])
    mask = torch.cat([batch["chosen_mask"], batch["rejected_mask"]])
    starts = batch["answer_start"].repeat(2)  # both sides of a pair share the prompt
    width = int(mask.sum(dim=1).max())
    scores = model(ids[:, :width], mask[:, :width], starts)
    return scores.chunk(2)


def preference_loss(margin: str) -> LossFunction:
    """A trainer loss function `loss_fn(model, batch) -> LossSum` of the margin ranking loss over pairs."""
    margin_table(margin)

    def loss_fn(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> LossSum:
        r_chosen, r_rejected = pairwise_scores(model, batch)
        dtype = torch.promote_types(r_chosen.dtype, torch.float32)  # the loss in float32 even under bf16
        margins = margins_for(batch["strength"], margin).to(dtype)
        losses = margin_ranking_loss(r_chosen.to(dtype), r_rejected.to(dtype), margins)
        return LossSum(losses.sum(), torch.tensor(losses.numel()))

    return loss_fn


def combine_rewards(
    helpfulness: torch.Tensor, safety: torch.Tensor, is_safety: torch.Tensor | Sequence[bool],
    threshold: float = SAFETY_THRESHOLD,
) -> torch.Tensor:
    """Llama 2's safety-first reward (section 3.2.3): `R_c = R_s if is_safety or R_s < threshold else R_h`.

    helpfulness, safety: (N,) SIGMOID scores in [0, 1] of the two reward models (the paper's 0.15 is on
    that scale); is_safety: (N,) bool, whether the prompt is known to elicit unsafe answers (IS_SAFETY(p),
    e.g. `toyworld.is_safety_prompt`). The same rule on the toy world's true scores is
    `toyworld.combined_reward`.
    """
    is_safety = torch.as_tensor(is_safety, dtype=torch.bool, device=safety.device)
    if not helpfulness.shape == safety.shape == is_safety.shape:
        raise ValueError(f"helpfulness {tuple(helpfulness.shape)}, safety {tuple(safety.shape)} and is_safety "
                         f"{tuple(is_safety.shape)} must have the same shape")
    for name, scores in (("helpfulness", helpfulness), ("safety", safety)):
        if bool(scores.isnan().any()):
            raise ValueError(f"{name} scores hold NaN at {scores.isnan().nonzero().flatten().tolist()[:8]}: the "
                             "reward model's output is broken (check its weights and inputs)")
        if scores.numel() and (float(scores.min()) < 0 or float(scores.max()) > 1):
            raise ValueError(f"{name} scores must be sigmoid scores in [0, 1], got values in "
                             f"[{float(scores.min())}, {float(scores.max())}]: apply torch.sigmoid to raw RM scores")
    return torch.where(is_safety | (safety < threshold), safety, helpfulness)


def whiten(values: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """`(v - mean) / std` over the batch (Llama 2, section 3.2.3, "WHITEN"), population std (N in the divisor).

    The paper does not say whether whitening uses batch or running statistics; this uses the batch's.
    """
    if values.numel() < 2:
        raise ValueError(f"whitening needs at least 2 values to estimate a spread, got {values.numel()}")
    return (values - values.mean()) / (values.var(unbiased=False) + eps).sqrt()


def ppo_reward(helpfulness: torch.Tensor, safety: torch.Tensor, is_safety: torch.Tensor | Sequence[bool],
               threshold: float = SAFETY_THRESHOLD, eps: float = 1e-6) -> torch.Tensor:
    """`WHITEN(LOGIT(R_c))` (Llama 2, section 3.2.3): the combined sigmoid score mapped back to the logit
    scale, then whitened over the batch. Scores are clamped to [eps, 1 - eps] so that 0 and 1 stay finite.
    """
    combined = combine_rewards(helpfulness, safety, is_safety, threshold)
    return whiten(torch.logit(combined.double(), eps=eps)).to(combined.dtype)


def unsafe_detection(safety: torch.Tensor, truly_unsafe: torch.Tensor | Sequence[bool],
                     threshold: float = SAFETY_THRESHOLD) -> tuple[float, float]:
    """(precision, recall) of flagging a response as unsafe when its sigmoid safety score is below `threshold`.

    Llama 2 (section 3.2.3) chose 0.15 for a precision of 0.89 and a recall of 0.55 on Meta's safety test set.
    safety: (N,) sigmoid scores; truly_unsafe: (N,) bool labels. An empty flag set has precision 1 (nothing
    wrongly flagged); no unsafe response at all is an error (recall is undefined).
    """
    truly_unsafe = torch.as_tensor(truly_unsafe, dtype=torch.bool, device=safety.device)
    if truly_unsafe.shape != safety.shape:
        raise ValueError(f"safety {tuple(safety.shape)} and truly_unsafe {tuple(truly_unsafe.shape)} must match")
    if not bool(truly_unsafe.any()):
        raise ValueError("truly_unsafe has no positive label: recall needs at least one unsafe response")
    flagged = safety < threshold
    hits = int((flagged & truly_unsafe).sum())
    return (hits / int(flagged.sum()) if bool(flagged.any()) else 1.0), hits / int(truly_unsafe.sum())


__all__ = [
    "MARGINS",
    "RewardModel",
    "Scorer",
    "combine_rewards",
    "margin_ranking_loss",
    "margin_table",
    "margins_for",
    "pairwise_scores",
    "ppo_reward",
    "preference_loss",
    "score_responses",
    "unsafe_detection",
    "whiten",
]
