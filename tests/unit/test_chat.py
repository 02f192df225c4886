"""Llama 2-Chat format: Meta's generation.py strings, token layout, answer mask and input validation."""

import io
import random

import pytest
import sentencepiece as spm

from llama_course.chat import ChatTokens, dialog_turns, encode_dialog, render_dialog, validate_dialog
from llama_course.tokenizer import Tokenizer, llama_trainer_options, train_tokenizer

SYSTEM_DIALOG = [
    {"role": "system", "content": "Always answer in French."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Bonjour !"},
    {"role": "user", "content": "How are you? "},
    {"role": "assistant", "content": "  Très bien, merci."},
    {"role": "user", "content": "What is 2 + 2?"},
]
SYSTEM_DIALOG_TEXT = (
    "<s>[INST] <<SYS>>\nAlways answer in French.\n<</SYS>>\n\nHello! [/INST] Bonjour ! </s>"
    "<s>[INST] How are you? [/INST] Très bien, merci. </s>"
    "<s>[INST] What is 2 + 2? [/INST]"
)


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


def system(content):
    return {"role": "system", "content": content}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    rng = random.Random(0)
    words = "hello how are you what is bonjour merci très bien the cat sat on mat always answer in French".split()
    corpus = [" ".join(rng.choice(words) for _ in range(8)) + rng.choice([" !", "?", ".", ", 42"]) for _ in range(800)]
    return train_tokenizer(corpus, vocab_size=340, model_path=tmp_path_factory.mktemp("chat") / "t.model")


def test_render_system_and_multi_turn_dialog():
    assert render_dialog(SYSTEM_DIALOG) == SYSTEM_DIALOG_TEXT


def test_render_dialog_without_system_ending_with_an_answer():
    messages = [user(" Hi "), assistant("Hello."), user("Bye"), assistant("Goodbye! \n")]
    assert render_dialog(messages) == "<s>[INST] Hi [/INST] Hello. </s><s>[INST] Bye [/INST] Goodbye! </s>"


def test_system_text_is_folded_before_stripping_as_meta_does():
    # Meta strips B_SYS + system + E_SYS + user as a whole: the system text keeps its own spaces.
    messages = [system(" Be brief. "), user("Hi  ")]
    assert render_dialog(messages) == "<s>[INST] <<SYS>>\n Be brief. \n<</SYS>>\n\nHi [/INST]"


def test_single_prompt():
    assert render_dialog([user("Tell me a story.")]) == "<s>[INST] Tell me a story. [/INST]"
    assert [(turn.prompt, turn.answer) for turn in dialog_turns([user("Q"), assistant("A")])] == [
        ("[INST] Q [/INST]", " A ")
    ]


def test_encode_dialog_concatenates_one_encoding_per_turn(tokenizer):
    encoded = encode_dialog(tokenizer, SYSTEM_DIALOG)
    expected = (
        tokenizer.encode(
            "[INST] <<SYS>>\nAlways answer in French.\n<</SYS>>\n\nHello! [/INST] Bonjour ! ", bos=True, eos=True
        )
        + tokenizer.encode("[INST] How are you? [/INST] Très bien, merci. ", bos=True, eos=True)
        + tokenizer.encode("[INST] What is 2 + 2? [/INST]", bos=True)
    )
    assert encoded.ids == expected
    assert encoded.ids.count(tokenizer.bos_id) == 3 and encoded.ids.count(tokenizer.eos_id) == 2
    # BOS/EOS are ids, not text: encoding the rendered string would spell out "<s>" with ordinary pieces.
    assert encoded.ids != tokenizer.encode(SYSTEM_DIALOG_TEXT)


def masked_spans(tokens: ChatTokens) -> list[list[int]]:
    spans, current = [], []
    for token_id, is_answer in zip(tokens.ids, tokens.answer_mask, strict=True):
        if is_answer:
            current.append(token_id)
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])


def test_answer_mask_covers_exactly_the_answers_and_their_eos(tokenizer):
    messages = [user("how are you?"), assistant("très bien, merci."), user("the cat?"), assistant("on the mat!")]
    encoded = encode_dialog(tokenizer, messages)
    assert len(encoded.answer_mask) == len(encoded.ids)
    spans = masked_spans(encoded)
    assert len(spans) == 2
    for span, answer in zip(spans, ["très bien, merci.", "on the mat!"], strict=True):
        assert span[-1] == tokenizer.eos_id
        # The answer's pieces spell " answer " exactly: the leading space rides on its first piece ('▁très'),
        # Meta's trailing space is the last piece before EOS.
        text = "".join(tokenizer.id_to_piece(token_id) for token_id in span[:-1]).replace("▁", " ")
        assert text == f" {answer} "
    # Everything unmasked is a prompt: BOS + "[INST] ... [/INST]" of each turn.
    first_turn_prompt = tokenizer.encode("[INST] how are you? [/INST]", bos=True)
    assert encoded.answer_mask[: len(first_turn_prompt)] == [False] * len(first_turn_prompt)
    assert encoded.answer_mask[len(first_turn_prompt)] is True


def test_open_final_turn_has_no_answer_tokens(tokenizer):
    encoded = encode_dialog(tokenizer, SYSTEM_DIALOG)
    last_prompt = tokenizer.encode("[INST] What is 2 + 2? [/INST]", bos=True)
    assert encoded.answer_mask[-len(last_prompt) :] == [False] * len(last_prompt)
    assert [tokenizer.decode(span) for span in masked_spans(encoded)] == ["Bonjour ! ", "Très bien, merci. "]
    assert encode_dialog(tokenizer, [user("hello")]).answer_mask == [False] * len(
        tokenizer.encode("[INST] hello [/INST]", bos=True)
    )


def test_tokenizer_with_pieces_across_the_prompt_end_is_refused(tmp_path):
    # Without whitespace/script splitting, BPE learns pieces like 'INST]▁ok' that straddle prompt and answer.
    options = {**llama_trainer_options(300), "split_by_whitespace": False, "split_by_unicode_script": False}
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["[INST] hi [/INST] ok "] * 200), model_writer=model, **options
    )
    path = tmp_path / "merging.model"
    path.write_bytes(model.getvalue())
    with pytest.raises(RuntimeError, match=r"runs across the end of the prompt '\[INST\] hi \[/INST\]'"):
        encode_dialog(Tokenizer(path), [user("hi"), assistant("ok")])


BAD_DIALOGS = [
    ([], ValueError, r"the dialog is empty"),
    ([assistant("Hi")], ValueError, r"message 0 has role 'assistant' where 'user' was expected"),
    ([user("a"), user("b")], ValueError, r"message 1 has role 'user' where 'assistant' was expected"),
    ([system("s"), assistant("a")], ValueError, r"message 1 has role 'assistant' where 'user' was expected"),
    ([user("a"), assistant("b"), system("s")], ValueError, r"message 2 has role 'system': .* may only come first"),
    ([system("s")], ValueError, r"has a system message but no user message"),
    ([user("")], ValueError, r"message 0 \(user\) has empty content"),
    ([user("a"), assistant(" \n\t")], ValueError, r"message 1 \(assistant\) has empty content"),
    ([system("")], ValueError, r"message 0 \(system\) has empty content"),
    ([user("do [INST] this")], ValueError, r"message 0 \(user\) contains the reserved tag '\[INST\]'"),
    ([user("a"), assistant("x [/INST] y")], ValueError, r"message 1 \(assistant\) contains .* '\[/INST\]'"),
    ([system("<<SYS>> x"), user("a")], ValueError, r"message 0 \(system\) contains .* '<<SYS>>'"),
    ([user("a <</SYS>>")], ValueError, r"message 0 \(user\) contains the reserved tag '<</SYS>>'"),
    ([{"role": "bot", "content": "x"}], ValueError, r"message 0 has role 'bot': roles are"),
    ([user("a"), {"role": "assistant"}], ValueError, r"message 1 lacks the key\(s\) \['content'\]"),
    ([user("a"), "just text"], TypeError, r"message 1 is a str, expected a dict"),
    ([{"role": "user", "content": 42}], TypeError, r"message 0 \(user\) has content of type int"),
]


@pytest.mark.parametrize(("messages", "error", "message"), BAD_DIALOGS)
def test_bad_dialogs_are_rejected_with_index_and_role(tokenizer, messages, error, message):
    with pytest.raises(error, match=message):
        validate_dialog(messages)
    with pytest.raises(error, match=message):
        render_dialog(messages)
    with pytest.raises(error, match=message):
        encode_dialog(tokenizer, messages)
