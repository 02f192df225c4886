"""Tests of exercise 10: packing conversations, positions and attention per document, the answer-only loss.

Llama 2, section 3.1 ("Fine-Tuning Details"): concatenated prompts and answers, loss on answer tokens only.
"""

import random

import torch

from llama_course.data import IGNORE_INDEX, pack_token_lists
from llama_course.grading.assertions import assert_equal, assert_tensor_close
from llama_course.grading.registry import Exercise
from llama_course.layers.cross_entropy import linear_cross_entropy
from llama_course.model import Llama

EXERCISE = Exercise(chapter=10, name="10_sft", title="Supervised fine-tuning")


def random_conversations(seed: int, n: int) -> tuple[list[list[int]], list[list[int]]]:
    """`n` conversations of 3 to 12 tokens: a prompt (mask 0) followed by an answer (mask 1)."""
    rng = random.Random(seed)
    documents, masks = [], []
    for _ in range(n):
        prompt, answer = rng.randint(1, 6), rng.randint(1, 6)
        documents.append([rng.randrange(4, 100) for _ in range(prompt + answer)])
        masks.append([0] * prompt + [1] * answer)
    return documents, masks


def random_document_ids(seed: int, batch: int, length: int) -> torch.Tensor:
    """(batch, length) ids of contiguous documents numbered from 0, documents of 1 to 6 tokens."""
    rng = random.Random(seed)
    rows = []
    for _ in range(batch):
        row, document = [], 0
        while len(row) < length:
            row += [document] * rng.randint(1, 6)
            document += 1
        rows.append(row[:length])
    return torch.tensor(rows)


@EXERCISE.test("pack_conversations", points=3)
def blocks_match_the_reference_packing(pack_conversations):
    for seed, block_size in ((0, 8), (1, 5), (2, 16), (3, 1)):
        documents, masks = random_conversations(seed, 7)
        got = pack_conversations(documents, masks, block_size)
        expected = pack_token_lists(documents, block_size, masks)
        for key in ("input_ids", "labels", "document_ids"):
            assert_equal([list(block) for block in got[key]], expected[key],
                         what=f"{key} with block_size={block_size} (seed {seed})")


@EXERCISE.test("pack_conversations", points=1)
def no_label_crosses_into_the_next_conversation(pack_conversations):
    documents = [[10, 11, 12], [20, 21, 22], [30, 31, 32, 33]]
    got = pack_conversations(documents, [[1, 1, 1], [1, 1, 1], [1, 1, 1, 1]], 4)
    assert_equal([list(block) for block in got["labels"]], [[11, 12, IGNORE_INDEX, 21], [22, IGNORE_INDEX, 31, 32]],
                 what="the labels of three fully learned documents of 3, 3 and 4 tokens in blocks of 4")


@EXERCISE.test("document_positions", points=2)
def positions_match_the_models_positions(document_positions):
    for seed, (batch, length) in enumerate(((1, 10), (3, 17), (2, 1))):
        document_ids = random_document_ids(seed, batch, length)
        expected = Llama._default_positions(length, 0, document_ids, None)
        assert_tensor_close(document_positions(document_ids), expected, atol=0, rtol=0,
                            what=f"the positions of document_ids {document_ids.tolist()}")


@EXERCISE.test("document_positions", points=1)
def one_document_counts_from_zero(document_positions):
    assert_tensor_close(document_positions(torch.zeros(2, 6, dtype=torch.long)), torch.arange(6).expand(2, 6),
                        atol=0, rtol=0, what="the positions of a block holding one document")


@EXERCISE.test("document_attention_mask", points=2)
def mask_matches_the_models_mask(document_attention_mask):
    for seed, (batch, length) in enumerate(((1, 9), (3, 14))):
        document_ids = random_document_ids(seed + 10, batch, length)
        expected = Llama._attention_mask(length, 0, None, document_ids, None, None)[:, 0]
        assert_tensor_close(document_attention_mask(document_ids), expected, atol=0, rtol=0,
                            what=f"the mask of document_ids {document_ids.tolist()}")


@EXERCISE.test("document_attention_mask", points=1)
def every_token_attends_itself_and_nothing_of_another_document(document_attention_mask):
    document_ids = random_document_ids(20, 2, 12)
    mask = document_attention_mask(document_ids)
    assert_tensor_close(mask.diagonal(dim1=1, dim2=2), torch.ones(2, 12, dtype=torch.bool), atol=0, rtol=0,
                        what="the diagonal of the mask (each token attends itself)")
    other = document_ids[:, :, None] != document_ids[:, None, :]
    assert_equal(bool((mask & other).any()), False, what="whether a token attends a token of another document")


def random_logits_and_labels(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 7, 5, generator=generator, dtype=torch.float64)
    weight = torch.randn(11, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 7), generator=generator)
    labels[torch.rand(2, 7, generator=generator) < 0.4] = IGNORE_INDEX
    labels[0, 0] = 3  # at least one answer token
    return hidden, weight, hidden @ weight.T, labels


@EXERCISE.test("sft_loss", points=2)
def loss_matches_the_reference_summed_cross_entropy(sft_loss):
    for seed in range(3):
        hidden, weight, logits, labels = random_logits_and_labels(seed)
        expected = linear_cross_entropy(hidden.flatten(0, 1), weight, labels.flatten(), reduction="sum")
        got = sft_loss(logits, labels)
        assert_tensor_close(torch.as_tensor(got).reshape(()), expected, atol=1e-9, rtol=1e-9,
                            what=f"the loss (seed {seed})")


@EXERCISE.test("sft_loss", points=1)
def prompt_positions_get_no_gradient(sft_loss):
    _, _, logits, labels = random_logits_and_labels(5)
    logits.requires_grad_(True)
    sft_loss(logits, labels).backward()
    if logits.grad is None:
        raise AssertionError("the loss is not differentiable with respect to the logits")
    ignored = labels == IGNORE_INDEX
    assert_tensor_close(logits.grad[ignored].abs().sum(), torch.tensor(0.0, dtype=torch.float64), atol=0, rtol=0,
                        what="the sum of |gradient| at positions labelled IGNORE_INDEX")
    assert_equal(bool((logits.grad[~ignored].abs().sum(dim=-1) > 0).all()), True,
                 what="whether every answer position gets a gradient")


EXERCISE.references("pack_conversations", pack_token_lists)
EXERCISE.references("document_positions", Llama._default_positions)
EXERCISE.references("document_attention_mask", Llama._attention_mask)
EXERCISE.references("sft_loss", linear_cross_entropy)
