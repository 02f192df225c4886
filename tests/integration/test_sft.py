"""Supervised fine-tuning: answer-only labels, the masked loss, isolated packing, malformed rows, a real gain."""

import argparse
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from llama_course.alignment.sft import (
    RANDOM_BASE,
    SHIPPED_SFT_DIR,
    SFTConfig,
    SFTDataConfig,
    export_model,
    load_base_model,
    load_sft_config,
    load_sft_results,
    run_sft,
)
from llama_course.alignment.sft_data import encode_conversation, encode_conversations, pack_sft
from llama_course.alignment.sft_eval import helpfulness_by_family
from llama_course.commands.sft import add_arguments, config_from_args
from llama_course.config import ModelConfig
from llama_course.experiments.sft import JUDGE, training_prompts
from llama_course.experiments.toyworld_data import sft_conversations, sft_data
from llama_course.experiments.toyworld_judges import held_out_tasks
from llama_course.model import IGNORE_INDEX, Llama
from llama_course.pretrained import ASSETS_DIR, pretrained_card
from llama_course.toyworld import toy_tokenizer
from llama_course.training.trainer import causal_lm_loss

DIALOG = [
    {"role": "system", "content": "Speak in French."},
    {"role": "user", "content": "What is 2 plus 3?"},
    {"role": "assistant", "content": "2 plus 3 is 5."},
    {"role": "user", "content": "Reverse this list: red, blue."},
    {"role": "assistant", "content": "blue, red."},
]
# Read off the toy tokenizer's pieces by hand: the two answers, each with Meta's trailing space and EOS.
FIRST_ANSWER = ["▁", "2", "▁plus", "▁", "3", "▁is", "▁", "5", ".", "▁", "</s>"]
SECOND_ANSWER = ["▁blue", ",", "▁red", ".", "▁", "</s>"]


@pytest.fixture(scope="module")
def tokenizer():
    return toy_tokenizer()


def float64_model(vocab_size: int, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    config = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab_size, multiple_of=16,
                         max_seq_len=256, attention_backend="eager")
    return Llama(config).double().eval()


def test_label_mask_covers_exactly_the_answers_of_every_turn(tokenizer):
    ids, mask = encode_conversation(tokenizer, DIALOG, max_tokens=256)
    pieces = [tokenizer.id_to_piece(i) for i in ids]
    assert len(ids) == 57
    # Answer 1 sits between the first "[/INST]" and the second turn's BOS, answer 2 after the second "[/INST]".
    assert pieces[22:25] == ["▁[/", "INST", "]"] and pieces[48:51] == ["▁[/", "INST", "]"]
    assert pieces[25:36] == FIRST_ANSWER and pieces[51:] == SECOND_ANSWER
    assert mask == [0] * 25 + [1] * 11 + [0] * 15 + [1] * 6
    # The system message, both prompts, the tags and both BOS tokens carry no loss.
    assert [p for p, m in zip(pieces, mask, strict=True) if not m].count("<s>") == 2
    assert "French" in "".join(p for p, m in zip(pieces, mask, strict=True) if not m)


def test_packed_labels_are_the_next_answer_tokens_only(tokenizer):
    ids, mask = encode_conversation(tokenizer, DIALOG, max_tokens=256)
    encoded = encode_conversations(tokenizer, [{"messages": DIALOG}] * 2, max_tokens=256)
    block = pack_sft(encoded, 100)[0]
    assert block["input_ids"][:57] == ids and block["document_ids"] == [0] * 57 + [1] * 43
    expected = [ids[t + 1] if mask[t + 1] else IGNORE_INDEX for t in range(56)] + [IGNORE_INDEX]
    assert block["labels"][:57] == expected
    assert sum(label != IGNORE_INDEX for label in block["labels"][:57]) == 17


def test_all_tokens_ablation_learns_every_token(tokenizer):
    _, mask = encode_conversation(tokenizer, DIALOG, max_tokens=256, answers_only=False)
    assert mask == [1] * 57


def test_loss_equals_manual_cross_entropy_over_answer_tokens(tokenizer):
    model = float64_model(tokenizer.vocab_size)
    ids, mask = encode_conversation(tokenizer, DIALOG, max_tokens=256)
    block = pack_sft(encode_conversations(tokenizer, [{"messages": DIALOG}] * 2, max_tokens=256), 100)
    batch = {name: torch.tensor(block[name]) for name in ("input_ids", "labels", "document_ids")}
    loss = causal_lm_loss(model, batch)
    # Reference: the first conversation alone, log-softmax in float64, summed over positions whose NEXT token
    # is an answer token; the second conversation's answers that fit in the block, the same way.
    def answer_nll(tokens, learn):
        with torch.no_grad():
            log_probs = F.log_softmax(model(torch.tensor([tokens])).logits[0], dim=-1)
        return -sum(log_probs[t, tokens[t + 1]].item() for t in range(len(tokens) - 1) if learn[t + 1])

    # The block's last position (99) predicts token 43 of the second copy, which lies beyond the block.
    manual = answer_nll(ids, mask) + answer_nll(ids[:44], mask[:44])
    assert int(loss.count) == 17 + sum(mask[1:44])
    assert loss.total.item() == pytest.approx(manual, rel=1e-10)


def test_packing_with_document_mask_gives_each_sample_its_unpacked_loss(tokenizer):
    model = float64_model(tokenizer.vocab_size, seed=1)
    conversations = sft_conversations(6, 2, 2, 2, seed=3)
    encoded = encode_conversations(tokenizer, conversations, max_tokens=256)
    block_size = 256
    blocks = pack_sft(encoded, block_size)
    starts = [0]
    for ids in encoded["input_ids"]:
        starts.append(starts[-1] + len(ids))
    checked = 0
    for index, (ids, mask) in enumerate(zip(encoded["input_ids"], encoded["loss_mask"], strict=True)):
        start, end = starts[index], starts[index + 1]
        if start // block_size != (end - 1) // block_size or end >= len(blocks) * block_size:
            continue  # straddles two blocks (or lies in the dropped tail): not comparable
        row, offset = divmod(start, block_size)
        block = {name: torch.tensor([blocks[row][name]]) for name in ("input_ids", "labels", "document_ids")}
        with torch.no_grad():
            logits = {masked: model(block["input_ids"], document_ids=block["document_ids"] if masked else None).logits
                      for masked in (True, False)}
            alone = model(torch.tensor([ids])).logits[0]
        labels = block["labels"][0, offset : offset + len(ids)]
        assert labels.tolist() == [ids[t + 1] if mask[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)] + [
            IGNORE_INDEX]

        def sample_loss(sample_logits, labels=labels):
            return F.cross_entropy(sample_logits, labels, ignore_index=IGNORE_INDEX, reduction="sum").item()

        packed = sample_loss(logits[True][0, offset : offset + len(ids)])
        assert packed == pytest.approx(sample_loss(alone), rel=1e-10), f"sample {index} at offset {offset}"
        if offset > 0:  # without the mask, a later sample sees its predecessors and its loss changes
            assert sample_loss(logits[False][0, offset : offset + len(ids)]) != pytest.approx(packed, rel=1e-6)
        checked += 1
    assert checked >= 5


def test_malformed_rows_raise_an_error_naming_the_row(tokenizer):
    good = {"messages": DIALOG[1:3]}
    bad_role = {"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Hello"}]}
    empty_answer = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}
    no_answer = {"messages": [{"role": "user", "content": "Hi"}]}
    with pytest.raises(ValueError, match=r"row 1: message 1 has role 'robot'"):
        encode_conversations(tokenizer, [good, bad_role], max_tokens=256)
    with pytest.raises(ValueError, match=r"row 2: message 1 \(assistant\) has empty content"):
        encode_conversations(tokenizer, [good, good, empty_answer], max_tokens=256)
    with pytest.raises(ValueError, match=r"row 1 ends on a 'user' message"):
        encode_conversations(tokenizer, [good, no_answer], max_tokens=256)
    with pytest.raises(ValueError, match=r"row 0 has no 'messages'"):
        encode_conversations(tokenizer, [{"prompt": "Hi"}], max_tokens=256)
    with pytest.raises(ValueError, match=r"row 1 has 57 tokens, more than max_tokens=40"):
        encode_conversations(tokenizer, [good, {"messages": DIALOG}], max_tokens=40, overlong="error")
    with pytest.raises(ValueError, match=r"row 0: its first turn alone has 36 tokens, more than max_tokens=30"):
        encode_conversations(tokenizer, [{"messages": DIALOG}], max_tokens=30)


def test_overlong_rows_are_truncated_at_a_turn_boundary(tokenizer):
    ids, mask = encode_conversation(tokenizer, DIALOG, max_tokens=256)
    truncated_ids, truncated_mask = encode_conversation(tokenizer, DIALOG, max_tokens=56)
    assert truncated_ids == ids[:36] and truncated_mask == mask[:36]
    assert truncated_ids[-1] == tokenizer.eos_id


def test_seeded_short_run_raises_held_out_helpfulness(tmp_path):
    """From an untrained tiny model (the base here), 12 steps of SFT (3 epochs of 32 blocks) beat it on unseen
    prompts: it learns the form of a kind answer, which the toy world's checker rewards."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = SFTDataConfig(tasks=160, multi_turn=0, dialogues=0, safety=0, validation=8, block_size=128,
                         task_families=["kindness"])
    config = SFTConfig(output_dir=str(tmp_path / "run"), base=RANDOM_BASE, epochs=3.0, data=data)
    config.trainer = dataclasses.replace(config.trainer, lr=3e-3, micro_batch_size=8, progress=False, eval_batches=1)
    tasks = held_out_tasks(60, seed=99, exclude=training_prompts(config), families=["kindness"])
    base_model, tokenizer = load_base_model(RANDOM_BASE)
    before, _ = helpfulness_by_family(base_model, tokenizer, tasks, JUDGE, max_new_tokens=16)
    result, model, _ = run_sft(config, *sft_data(config.data))
    after, answered = helpfulness_by_family(model, tokenizer, tasks, JUDGE, max_new_tokens=16)
    assert len(tasks) >= 25 and result.step == 12 and result.losses[-1] < result.losses[0] - 2.0
    assert after["kindness"] > before["kindness"] + 0.3, (before, after, answered[:3])


def test_exported_model_loads_back_identically(tmp_path, tokenizer):
    model, _ = load_base_model(RANDOM_BASE)
    export_model(model, tmp_path / "sft", {"note": "test"})
    loaded, loaded_tokenizer = load_base_model(str(tmp_path / "sft"))
    tokens = torch.tensor([encode_conversation(tokenizer, DIALOG, max_tokens=256)[0]])
    with torch.no_grad():
        assert torch.equal(model.eval()(tokens).logits, loaded(tokens).logits)
    assert loaded_tokenizer.model_path == tokenizer.model_path
    assert json.loads((tmp_path / "sft" / "config.json").read_text())["card"] == {"note": "test"}


def test_config_derives_steps_from_epochs_and_rejects_bad_keys(tmp_path):
    config = SFTConfig.from_dict({"epochs": 2, "trainer": {"micro_batch_size": 16}})
    assert config.steps_for(1333) == 167 and config.trainer.weight_decay == 0.1 and config.trainer.lr == 1e-3
    with pytest.raises(ValueError, match="trainer.steps is derived from epochs"):
        SFTConfig.from_dict({"trainer": {"steps": 10}})
    with pytest.raises(ValueError, match=r"unknown config key data\.shuffle in \[data\]"):
        SFTConfig.from_dict({"data": {"shuffle": True}})
    with pytest.raises(FileNotFoundError, match="neither a shipped model"):
        load_base_model("no-such-model")
    (tmp_path / "sft.toml").write_text('base = "random-tiny"\nepochs = 1\n[data]\nblock_size = 128\n')
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", str(tmp_path / "sft.toml"), "--lr", "5e-4", "--all-tokens"])
    resolved = config_from_args(args)
    assert (resolved.base, resolved.epochs, resolved.data.block_size) == (RANDOM_BASE, 1.0, 128)
    assert resolved.trainer.lr == 5e-4 and resolved.data.answers_only is False and resolved.data.document_masking


def test_careless_share_changes_only_task_answers_and_zero_keeps_the_mix():
    clean = sft_conversations(40, 6, 4, 4, seed=3)
    assert sft_conversations(40, 6, 4, 4, seed=3, careless=0.0)["messages"] == clean["messages"]
    sloppy = sft_conversations(40, 6, 4, 4, seed=3, careless=1.0)
    changed = [s for a, b, s in zip(clean["messages"], sloppy["messages"], clean["source"], strict=True) if a != b]
    assert len(changed) >= 40 and all(s.startswith("task:") or s == "multi_turn" for s in changed)
    for a, b in zip(clean["messages"], sloppy["messages"], strict=True):
        assert [m["content"] for m in a if m["role"] == "user"] == [m["content"] for m in b if m["role"] == "user"]


@pytest.mark.parametrize("path", sorted((ASSETS_DIR / "configs").glob("sft-*.toml")), ids=lambda path: path.name)
def test_every_shipped_sft_config_loads(path):
    config = load_sft_config(path)
    assert config.output_dir.startswith("runs/") and config.data.tasks > 0


def test_shipped_sft_model_reproduces_the_held_out_helpfulness_its_card_records():
    """Greedy answers to the first 40 of the held-out tasks the card was measured on (their count and seed read
    from results.json) score the card's mean helpfulness within 4 standard errors of a 40-task subset of them
    (with the finite-population correction): regenerating the SFT model needs no edit here."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    results = load_sft_results()
    recorded = pretrained_card("sft")["card"]["held_out_helpfulness"]["sft"]["all"]
    # a seed's tasks come in the same order however many are drawn, so these are the first of the card's tasks
    tasks = held_out_tasks(results["eval_tasks"], results["eval_seed"],
                           exclude=training_prompts(load_sft_config(SHIPPED_SFT_DIR / "sft.toml")))
    subset = min(40, len(tasks))
    model, tokenizer = load_base_model("sft")
    scores = [item.helpfulness for item in helpfulness_by_family(model, tokenizer, tasks.select(range(subset)),
                                                                 JUDGE)[1]]
    mean = sum(scores) / subset
    spread = math.sqrt(sum((score - mean) ** 2 for score in scores) / (subset - 1))
    standard_error = spread * math.sqrt(1 / subset - 1 / results["eval_tasks"])
    assert abs(mean - recorded) < 4 * standard_error + 1e-12, (mean, recorded, standard_error)
