"""The shipped base model: it loads, it is the trained model its card describes, and what it writes is graded.

References: the unigram entropy of the held-out stories (the loss of the best model that ignores context,
computed from token counts) and the toy world's own story checker.
"""

import json
import math
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from llama_course.config import ModelConfig, count_parameters
from llama_course.measurements.story_samples import GrammarScore, grammar_score, sample_stories
from llama_course.model import Llama
from llama_course.pretrained import (
    ASSETS_DIR,
    export_pretrained,
    load_pretrained,
    load_pretrained_folder,
    pretrained_card,
    shipped_models,
)
from llama_course.toyworld import check_story, generate_stories, toy_tokenizer
from llama_course.training.pretrain import load_config
from llama_course.training.trainer import TrainerConfig

SHIPPED_BYTES_LIMIT = 30 * 2**20  # every checkpoint the package ships, together


@pytest.fixture(scope="module")
def base():
    return load_pretrained("base")


def test_base_loads_with_the_configuration_of_its_card(base):
    model, tokenizer = base
    card = pretrained_card("base")
    assert model.config == ModelConfig.from_dict(card["model_config"])
    assert sum(p.numel() for p in model.parameters()) == count_parameters(model.config) == card["card"]["parameters"]
    assert tokenizer.vocab_size == model.config.vocab_size == 1024
    assert not model.training


def test_base_weights_are_the_shipped_file_bit_for_bit(base):
    model, _ = base
    stored = load_file(ASSETS_DIR / "base" / "model.safetensors")
    assert set(stored) == set(model.state_dict())
    assert all(torch.equal(stored[name], tensor) for name, tensor in model.state_dict().items())


def test_base_card_matches_the_reproduce_config():
    """The shipped pretrain.toml is the configuration the shipped weights were trained with."""
    recorded = pretrained_card("base")["card"]["pretrain_config"]
    config = load_config(ASSETS_DIR / "base" / "pretrain.toml").to_dict()
    assert config["model"] == recorded["model"]
    assert config["data"] == recorded["data"]
    ignored = {"progress", "eval_every", "checkpoint_every"}  # logging and saving do not change the weights
    for key, value in config["trainer"].items():
        if key in ignored:
            continue
        # A trainer option added after the model was trained must default to the old behaviour.
        expected = recorded["trainer"].get(key, getattr(TrainerConfig(), key))
        assert value == expected, f"trainer.{key}: config {value!r}, trained with {expected!r}"


def test_base_predicts_held_out_stories_far_better_than_unigram_statistics(base):
    model, tokenizer = base
    stories = generate_stories(20, seed=12345)["text"]  # a seed the training corpus (seed 0) does not use
    rows = [tokenizer.encode(story, bos=True, eos=True) for story in stories]
    counts = Counter(token for row in rows for token in row[1:])
    total = sum(counts.values())
    unigram_entropy = -sum(c / total * math.log(c / total) for c in counts.values())
    losses = []
    with torch.no_grad():
        for row in rows:
            tokens = torch.tensor([row])
            logits = model(tokens[:, :-1]).logits
            losses.append(torch.nn.functional.cross_entropy(logits[0], tokens[0, 1:], reduction="sum"))
    model_loss = float(sum(losses)) / total
    assert model_loss < 0.35 * unigram_entropy, (model_loss, unigram_entropy)
    assert abs(model_loss - pretrained_card("base")["card"]["validation_loss"]) < 0.15


def test_base_samples_at_temperature_one_are_at_least_90_percent_valid_sentences(base):
    """The shipped model's bar (issue: at least 90% of sampled sentences valid), drawn from its own distribution
    with a seed the card's score (seed 0) does not use."""
    model, tokenizer = base
    stories = sample_stories(model, tokenizer, 48, temperature=1.0, seed=3)
    score = grammar_score(stories)
    assert score.sentences >= 400
    assert score.fraction >= 0.9, score
    # and it agrees with the fraction the card records (seed 0, 256 stories), within 4 binomial standard errors
    recorded = pretrained_card("base")["card"]["grammar_score"]["fraction"]
    standard_error = math.sqrt(recorded * (1 - recorded) / score.sentences)
    assert abs(score.fraction - recorded) < 4 * standard_error, (score, recorded)


def test_all_shipped_checkpoints_fit_the_size_budget():
    total = sum(path.stat().st_size for path in ASSETS_DIR.rglob("*.safetensors"))
    assert total < SHIPPED_BYTES_LIMIT, f"shipped checkpoints weigh {total:,} bytes"
    assert {"base", "sft"} <= set(shipped_models())


def test_unknown_shipped_model_is_a_clear_error():
    with pytest.raises(ValueError, match="'sft-huge'.*ships"):
        load_pretrained("sft-huge")


def test_grammar_score_pools_sentences_over_stories():
    stories = list(generate_stories(2, seed=5)["text"])
    broken = "There was a red cat named Tom. Mia gave the ball to Tom."  # Mia was never introduced
    score = grammar_score([*stories, broken])
    sentences = [len(check_story(story).verdicts) for story in stories]
    assert score == GrammarScore(valid_sentences=sum(sentences) + 1, sentences=sum(sentences) + 2, stories=3)
    assert score.fraction == pytest.approx((sum(sentences) + 1) / (sum(sentences) + 2))
    assert GrammarScore(0, 0, 1).fraction == 0.0


def test_export_then_load_round_trips_a_training_run(tmp_path):
    from llama_course.training.trainer import Trainer

    config = ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=1024, multiple_of=32,
                         max_seq_len=64)
    torch.manual_seed(0)
    model = Llama(config)
    blocks = torch.randint(4, 1024, (8, 17))
    from llama_course.training import TensorBlocks

    data = TensorBlocks(input_ids=blocks[:, :-1], labels=blocks[:, 1:])
    run_dir = tmp_path / "run"
    trainer = Trainer(model, data, TrainerConfig(steps=2, micro_batch_size=4, warmup_steps=1, progress=False,
                                                 device="cpu"), run_dir,
                      metadata={"model_config": config.to_dict(), "pretrain_config": {"note": "test"},
                                "tokenizer": str(toy_tokenizer().model_path)})
    trainer.fit()
    card = export_pretrained(run_dir, tmp_path / "exported", samples=2)
    loaded, tokenizer = load_pretrained_folder(tmp_path / "exported")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(),
                                                  strict=True))
    assert tokenizer.vocab_size == 1024
    stored = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert stored == card and card["tokenizer"] == "toy" and card["card"]["steps"] == 2
    assert card["card"]["grammar_score"]["stories"] == 2


def test_export_of_a_folder_without_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no single-file checkpoint"):
        export_pretrained(tmp_path, tmp_path / "out")
