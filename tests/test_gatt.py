"""Ghost Attention: the data construction of Llama 2 section 3.3, the recall metric, the attention analysis."""

import dataclasses

import pytest
import torch

from llama_course.alignment.gatt import (
    answer_dialogues,
    build_gatt_data,
    gatt_blocks,
    gatt_sample_ids,
    gatt_samples,
    recall_by_turn,
    with_instruction_in_every_turn,
    with_instruction_in_first_turn_only,
)
from llama_course.alignment.gatt_attention import attention_to_system, system_span
from llama_course.chat import dialog_turns, encode_dialog
from llama_course.config import PRESETS
from llama_course.data import IGNORE_INDEX
from llama_course.model import Llama
from llama_course.toyworld import generate_dialogues, toy_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return toy_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = dataclasses.replace(PRESETS["tiny"], vocab_size=tokenizer.vocab_size, dim=64, n_layers=2,
                                 max_seq_len=256)
    return Llama(config).eval()


@pytest.fixture(scope="module")
def dialogue():
    return list(generate_dialogues(1, seed=3, n_turns=4)["messages"][0])


def test_instruction_is_added_to_every_user_turn_then_kept_in_the_first_only(dialogue):
    instruction = dialogue[0]["content"]
    everywhere = with_instruction_in_every_turn(dialogue)
    users = [m["content"] for m in everywhere if m["role"] == "user"]
    assert all(u.startswith(instruction) for u in users[1:]) and len(users) == 4
    assert with_instruction_in_first_turn_only(everywhere) == dialogue
    for sample in gatt_samples([everywhere]):
        turns = dialog_turns(sample)
        assert instruction in turns[0].prompt
        assert all(instruction not in turn.prompt for turn in turns[1:])
    assert [len(s) for s in gatt_samples([everywhere])] == [5, 7, 9]  # k = 2, 3, 4 answers
    assert [len(s) for s in gatt_samples([everywhere], (1, 1))] == [3]


def test_loss_mask_covers_only_the_last_answer(tokenizer, dialogue):
    ids, mask = gatt_sample_ids(tokenizer, dialogue, max_tokens=512)
    assert ids == encode_dialog(tokenizer, dialogue).ids
    last = dialog_turns(dialogue)[-1]
    last_ids = tokenizer.encode(last.text, bos=True, eos=True)
    prompt_length = len(tokenizer.encode(last.prompt, bos=True))
    start = len(ids) - len(last_ids)
    assert ids[start:] == last_ids
    assert mask == [0] * (start + prompt_length) + [1] * (len(last_ids) - prompt_length)
    learned = [token for token, flag in zip(ids, mask, strict=True) if flag]
    assert learned[-1] == tokenizer.eos_id
    assert tokenizer.decode(learned[:-1]).strip() == dialogue[-1]["content"]


def test_each_sample_gets_one_padded_block_whose_labels_are_the_last_answer(tokenizer, dialogue):
    samples = {"messages": gatt_samples([with_instruction_in_every_turn(dialogue)])}
    blocks = gatt_blocks(tokenizer, samples, 512)
    assert len(blocks) == 3
    for block, messages in zip(blocks, samples["messages"], strict=True):
        ids, mask = gatt_sample_ids(tokenizer, messages, 512)
        assert block["input_ids"][: len(ids)] == ids
        assert set(block["input_ids"][len(ids):]) == {tokenizer.pad_id}
        expected = [ids[t + 1] if t + 1 < len(ids) and mask[t + 1] else IGNORE_INDEX for t in range(512)]
        assert block["labels"] == expected
        assert block["document_ids"] == [0] * len(ids) + [1] * (512 - len(ids))


def test_recall_by_turn_on_hand_made_dialogues():
    first = [
        {"role": "system", "content": "You enjoy tennis. Talk about it in every answer."},
        {"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "4. I love tennis."},
        {"role": "user", "content": "What is 3 plus 3?"}, {"role": "assistant", "content": "6."},
    ]
    second = [
        {"role": "system", "content": "Hobby: chess Figure: Napoleon"},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Soldiers, listen! Hello."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, chess. Soldiers, listen!"},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Soldiers, listen! I play chess."},
    ]
    # first: 1, 0; second: (0 + 1) / 2, (1 + 0.5) / 2, (1 + 1) / 2
    assert recall_by_turn([first, second]) == pytest.approx([(1 + 0.5) / 2, (0 + 0.75) / 2, 1.0])
    with pytest.raises(ValueError, match="system message"):
        recall_by_turn([first[1:]])


def test_answer_dialogues_repeats_the_instruction_and_stops_at_the_context(model, tokenizer):
    dialogues = list(generate_dialogues(3, seed=1, n_turns=12)["messages"])
    answered = answer_dialogues(model, tokenizer, dialogues, instruction_in_every_turn=True, max_new_tokens=8)
    for source, done in zip(dialogues, answered, strict=True):
        instruction = source[0]["content"]
        assert [m["role"] for m in done] == ["system"] + ["user", "assistant"] * ((len(done) - 1) // 2)
        users = [m["content"] for m in done if m["role"] == "user"]
        assert users == [users[0]] + [f"{instruction} {m['content']}" for m in source[3:len(done):2]]
        assert len(encode_dialog(tokenizer, done).ids) <= model.config.max_seq_len
    assert any(len(done) < len(source) for source, done in zip(dialogues, answered, strict=True))


def test_bad_arguments_raise_clear_errors(model, tokenizer, dialogue):
    with pytest.raises(ValueError, match="does not start with the instruction"):
        with_instruction_in_first_turn_only([dialogue[0], *dialogue[1:3], {"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match="turns="):
        gatt_samples([dialogue], (0, None))
    with pytest.raises(ValueError, match="answers='oracle'"):
        build_gatt_data(model, tokenizer, 1, answers="oracle")


def test_reference_answers_build_last_turn_samples(model, tokenizer):
    data = build_gatt_data(model, tokenizer, 4, seed=2, n_turns=(2, 3), answers="reference")
    source = generate_dialogues(4, seed=2, n_turns=(2, 3))
    assert len(data) == sum(n - 1 for n in source["n_turns"])
    for row in data:
        assert (len(row["messages"]) - 1) // 2 == row["turn"] >= 2


def test_system_span_and_attention_match_a_manual_computation(model, tokenizer, dialogue):
    ids = encode_dialog(tokenizer, dialogue).ids
    start, end = system_span(tokenizer, ids, dialogue[0]["content"])
    assert dialogue[0]["content"].startswith(tokenizer.decode(ids[start:end]).strip())
    assert end - start >= 3
    result = attention_to_system(model, tokenizer, dialogue)
    assert model.config.attention_backend == "sdpa"  # switched back
    # Manual reference in float64: recompute every layer's attention from the eager weights, loop by loop.
    model.set_attention_backend("eager")
    with torch.no_grad():
        model(torch.tensor([ids]), need_weights=True)
    model.set_attention_backend("sdpa")
    weights = [w[0].double() for w in model.last_attention]
    answer = encode_dialog(tokenizer, dialogue).answer_mask
    bos = [t for t, token in enumerate(ids) if token == tokenizer.bos_id] + [len(ids)]
    for turn in range(len(bos) - 1):
        positions = [t for t in range(bos[turn], bos[turn + 1]) if answer[t]]
        best = [max(float(w[h, t, start:end].sum()) for w in weights for h in range(w.shape[0])) for t in positions]
        assert float(result.by_turn[turn]) == pytest.approx(sum(best) / len(best), rel=1e-5)
        layer0 = [max(float(weights[0][h, t, start:end].sum()) for h in range(weights[0].shape[0])) for t in positions]
        assert float(result.by_turn_layer[turn, 0]) == pytest.approx(sum(layer0) / len(layer0), rel=1e-5)
    with pytest.raises(ValueError, match="system message"):
        attention_to_system(model, tokenizer, dialogue[1:])


def test_finetuning_on_gatt_samples_lowers_their_last_turn_loss(tokenizer, tmp_path):
    from llama_course.alignment.gatt import finetune_gatt
    from llama_course.training.trainer import TrainerConfig, causal_lm_loss

    torch.manual_seed(1)
    config = dataclasses.replace(PRESETS["tiny"], vocab_size=tokenizer.vocab_size, dim=64, n_layers=2,
                                 max_seq_len=256)
    small = Llama(config)
    data = build_gatt_data(small, tokenizer, 4, seed=4, n_turns=2, answers="reference")
    blocks = gatt_blocks(tokenizer, data, 256)
    batch = {column: torch.tensor(blocks[column]) for column in ("input_ids", "labels", "document_ids")}

    def mean_loss() -> float:
        with torch.no_grad():
            loss = causal_lm_loss(small, batch)
        return float(loss.total / loss.count)

    before = mean_loss()
    trainer = TrainerConfig(lr=3e-3, micro_batch_size=4, warmup_steps=0, eval_every=0, eval_batches=0,
                            checkpoint_every=0, progress=False, device="cpu")
    result = finetune_gatt(small, tokenizer, data, tmp_path, epochs=8, trainer=trainer)
    assert result.step == 8 * len(data) // 4
    after = mean_loss()
    assert after < before - 0.5
