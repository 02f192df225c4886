"""Tokenizing and packing datasets into fixed-length training blocks."""

import datasets
import pytest

from llama_course.data import IGNORE_INDEX, pack_dataset, pack_token_lists, tokenize_dataset
from llama_course.toyworld.assets import toy_tokenizer
from llama_course.toyworld.stories import generate_stories


def test_packing_by_hand():
    blocks = pack_token_lists([[1, 10, 11, 2], [1, 20, 2], [1, 30, 31, 32, 2]], block_size=4)
    # stream: 1 10 11 2 | 1 20 2 | 1 30 31 32 2  (12 tokens -> 2 full blocks, each reading one token ahead)
    assert blocks["input_ids"] == [[1, 10, 11, 2], [1, 20, 2, 1]]
    assert blocks["labels"] == [[10, 11, 2, IGNORE_INDEX], [20, 2, IGNORE_INDEX, 30]]
    assert blocks["document_ids"] == [[0, 0, 0, 0], [0, 0, 0, 1]]


def test_loss_mask_hides_prompt_tokens():
    blocks = pack_token_lists([[1, 5, 6, 7, 2]], block_size=4, loss_masks=[[0, 0, 0, 1, 1]])
    assert blocks["labels"] == [[IGNORE_INDEX, IGNORE_INDEX, 7, 2]]


def test_dataset_pipeline_matches_the_reference_packing():
    tokenizer = toy_tokenizer()
    stories = generate_stories(40, seed=0)
    tokens = tokenize_dataset(stories, tokenizer)
    assert tokens.column_names == ["input_ids"]
    assert tokens[0]["input_ids"] == tokenizer.encode(stories[0]["text"], bos=True, eos=True)
    packed = pack_dataset(tokens, block_size=64, batch_size=1000)
    reference = pack_token_lists(tokens["input_ids"], 64)
    assert packed.column_names == ["input_ids", "labels", "document_ids"]
    assert packed["input_ids"] == reference["input_ids"]
    assert packed["labels"] == reference["labels"]
    total = sum(len(ids) for ids in tokens["input_ids"])
    assert len(packed) == (total - 1) // 64
    stream = [token for ids in tokens["input_ids"] for token in ids]
    assert [token for block in packed["input_ids"] for token in block] == stream[: 64 * len(packed)]


def test_batches_drop_only_their_own_tails():
    tokens = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3, 4, 5]] * 6})
    assert len(pack_dataset(tokens, block_size=4, batch_size=2)) == 3 * 2  # 10 tokens per batch -> 2 blocks
    with_mask = tokens.add_column("loss_mask", [[1, 1, 1, 0, 0]] * 6)
    assert pack_dataset(with_mask, block_size=4)["labels"][0] == [2, 3, IGNORE_INDEX, IGNORE_INDEX]


def test_bad_inputs_are_errors():
    stories = generate_stories(3)
    with pytest.raises(ValueError, match="text_column='story'"):
        tokenize_dataset(stories, toy_tokenizer(), text_column="story")
    with pytest.raises(ValueError, match="no 'input_ids' column"):
        pack_dataset(stories, 16)
    with pytest.raises(ValueError, match="block_size=0"):
        pack_token_lists([[1, 2]], 0)
    with pytest.raises(ValueError, match="block_size=-4"):
        pack_dataset(tokenize_dataset(stories, toy_tokenizer()), -4)
    with pytest.raises(ValueError, match="2 loss masks for 1 documents"):
        pack_token_lists([[1, 2]], 1, loss_masks=[[1, 1], [1]])
    with pytest.raises(ValueError, match="document 0 has 2 tokens but a loss mask of 1"):
        pack_token_lists([[1, 2]], 1, loss_masks=[[1]])
