"""Ghost Attention: the data construction of Llama 2 section 3.3, the recall metric, the attention analysis."""

import dataclasses

import pytest
import torch

from llama_course.alignment import gatt
from llama_course.alignment.gatt import (
    adherence_by_turn,
    answer_dialogues,
    build_gatt_data,
    gatt_blocks,
    gatt_sample_ids,
    gatt_samples,
    mix_blocks,
    recall_by_turn,
    with_instruction_in_every_turn,
    with_instruction_in_first_turn_only,
)
from llama_course.alignment.gatt_attention import attention_to_system, system_span
from llama_course.chat import dialog_turns, encode_dialog
from llama_course.config import PRESETS
from llama_course.data import IGNORE_INDEX
from llama_course.model import Llama
from llama_course.toyworld import adherence, generate_dialogues, toy_tokenizer


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
    assert adherence_by_turn([first, second], adherence) == [[1.0, 0.0], [0.5, 0.75, 1.0]]
    assert recall_by_turn([first, second], adherence) == pytest.approx([(1 + 0.5) / 2, (0 + 0.75) / 2, 1.0])
    with pytest.raises(ValueError, match="system message"):
        recall_by_turn([first[1:]], adherence)


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


def test_a_judge_keeps_the_best_of_the_samples_of_every_turn(model, tokenizer):
    dialogues = list(generate_dialogues(4, seed=5, n_turns=3)["messages"])
    calls: list[str] = []

    def judge(system: str, answer: str) -> float:  # prefers answers with more letters 'e'
        calls.append(answer)
        return min(1.0, answer.count("e") / 20)

    answered = answer_dialogues(model, tokenizer, dialogues, instruction_in_every_turn=True, max_new_tokens=12,
                                temperature=1.0, samples_per_turn=3, judge=judge)
    assert len(calls) == 4 * 3 * 3  # each turn's 3 samples, scored once each, turn by turn, dialogue by dialogue
    assert len({*calls}) > 12  # sampled, not one answer repeated
    for index, done in enumerate(answered):
        assert len(done) == 7
        for turn in range(3):
            candidates = calls[(turn * 4 + index) * 3:][:3]
            best = max(candidates, key=lambda answer: judge("", answer))  # the first of ties, as documented
            assert done[2 + 2 * turn]["content"] == best
    with pytest.raises(ValueError, match="samples_per_turn=3"):
        answer_dialogues(model, tokenizer, dialogues, samples_per_turn=3, judge=judge)  # greedy: 3 equal samples
    with pytest.raises(ValueError, match="samples_per_turn=2"):
        answer_dialogues(model, tokenizer, dialogues, samples_per_turn=2, temperature=1.0)  # nothing to choose by


def test_rejection_keeps_only_samples_whose_learned_answer_follows_the_instruction(model, tokenizer, monkeypatch):
    def half_followed(model, tokenizer, dialogues, **kwargs):  # the reference answers, every second one spoiled
        assert kwargs["judge"] is adherence and kwargs["samples_per_turn"] == 5
        out = [with_instruction_in_every_turn(d) for d in dialogues]
        for d in out:
            for position in range(4, len(d), 4):
                d[position] = {"role": "assistant", "content": "no."}
        return out

    monkeypatch.setattr(gatt, "answer_dialogues", half_followed)
    dialogues = generate_dialogues(6, seed=8, n_turns=3)["messages"]
    data = build_gatt_data(model, tokenizer, dialogues, adherence, seed=8, turns=(1, None), samples_per_turn=5)
    assert sorted(data["turn"]) == [1] * 6 + [3] * 6  # turn 2 ("no.") rejected everywhere
    for messages in data["messages"]:
        assert adherence(messages[0]["content"], messages[-1]["content"]) == 1.0


def test_mix_blocks_keep_every_conversation_with_the_sft_loss(tokenizer):
    from llama_course.alignment.sft_data import encode_conversation
    from llama_course.experiments.toyworld_data import sft_conversations

    mix = sft_conversations(5, 1, 1, 1, seed=0)
    blocks = mix_blocks(tokenizer, mix, 128)
    encoded = [encode_conversation(tokenizer, m, max_tokens=128) for m in mix["messages"]]
    stream = [token for ids, _ in encoded for token in ids]
    flat = [token for block in blocks["input_ids"] for token in block]
    assert flat[: len(stream)] == stream and set(flat[len(stream):]) <= {tokenizer.pad_id}
    assert len(flat) - len(stream) < 128
    learned = sum(label != IGNORE_INDEX for block in blocks["labels"] for label in block)
    # every masked-in token but each conversation's first (nothing predicts a document's first token)
    assert learned == sum(sum(mask[1:]) for _, mask in encoded)


def test_bad_arguments_raise_clear_errors(model, tokenizer, dialogue):
    with pytest.raises(ValueError, match="does not start with the instruction"):
        with_instruction_in_first_turn_only([dialogue[0], *dialogue[1:3], {"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match="turns="):
        gatt_samples([dialogue], (0, None))
    with pytest.raises(ValueError, match="answers='oracle'"):
        build_gatt_data(model, tokenizer, [dialogue], adherence, answers="oracle")
    with pytest.raises(ValueError, match="samples_per_turn=0"):
        answer_dialogues(model, tokenizer, [dialogue], samples_per_turn=0)


def test_reference_answers_build_last_turn_samples(model, tokenizer):
    source = generate_dialogues(4, seed=2, n_turns=(2, 3))
    data = build_gatt_data(model, tokenizer, source["messages"], adherence, answers="reference")
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
    data = build_gatt_data(small, tokenizer, generate_dialogues(4, seed=4, n_turns=2)["messages"], adherence,
                           answers="reference")
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


def test_summary_pairs_each_dialogue_and_task_across_models():
    from llama_course.experiments.gatt import GAttConfig, mean_by_turn, recall_over_turns, summarize

    config = GAttConfig(eval_turns=4, recall_turns=(2, 3))
    base = {"adherence": [[1.0, 0.0, 0.5, 1.0], [0.0, 0.5, 0.5], [1.0, 1.0]], "helpfulness": [0.5, 0.25]}
    assert recall_over_turns(base["adherence"], (2, 3)).tolist() == [0.25, 0.5, 1.0]
    assert mean_by_turn([base["adherence"]]) == [2 / 3, 0.5, 0.5, 1.0]
    # GAtt: +0.25 on every dialogue of both seeds; the control: the SFT model's values, one task 0.25 lower
    gatt = {"adherence": [[a + 0.25 for a in row] for row in base["adherence"]], "helpfulness": [0.5, 0.25]}
    control = {"adherence": base["adherence"], "helpfulness": [0.25, 0.25]}
    summary = summarize(config, base, {0: {"gatt": gatt, "control": control}, 1: {"gatt": gatt, "control": control}})
    recall, helpfulness = summary["recall"], summary["helpfulness"]
    assert recall["mean"]["base"]["rate"] == pytest.approx(1.75 / 3)
    for pair, value in {"gatt-base": 0.25, "gatt-control": 0.25, "control-base": 0.0}.items():
        assert recall["difference"][pair] == pytest.approx({"rate": value, "low": value, "high": value})
    assert helpfulness["difference"]["control-base"]["rate"] == pytest.approx(-0.125)
    assert helpfulness["difference"]["control-base"]["low"] == pytest.approx(-0.25)
    assert helpfulness["difference"]["control-base"]["high"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"dialogues \[0\] end before turn 3"):
        recall_over_turns([[1.0, 1.0]], (3, 4))
    with pytest.raises(ValueError, match="recall_turns"):
        GAttConfig(eval_turns=8)
