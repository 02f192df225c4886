"""`llama-course chat`, driven through stdin in a subprocess: streamed answers, multi-turn memory, /reset, /exit."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llama_course.alignment.sft import RANDOM_BASE, SHIPPED_SFT_DIR, export_model, load_base_model
from llama_course.chat import encode_dialog
from llama_course.chat_session import ChatSession
from llama_course.config import ModelConfig
from llama_course.generation import generate
from llama_course.model import Llama

ROOT = Path(__file__).resolve().parents[2]
MAX_NEW = 12
FIRST, SECOND = "What is 2 plus 3?", "Reverse this list: red, blue."


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat") / "model"
    model, _ = load_base_model(RANDOM_BASE)
    export_model(model, folder, {"note": "untrained, for the chat test"})
    return folder


def greedy_answer(model, tokenizer, messages) -> str:
    prompt = encode_dialog(tokenizer, messages).ids
    out = generate(model, [prompt], MAX_NEW, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)[0]
    return tokenizer.decode([t for t in out if t != tokenizer.eos_id]).strip()


def chat(folder, lines: list[str], *extra: str) -> str:
    command = [sys.executable, "-m", "llama_course.cli", "chat", "--temperature", "0", "--max-new-tokens", str(MAX_NEW),
               *(["--checkpoint", str(folder)] if folder is not None else []), *extra]
    done = subprocess.run(command, input="".join(line + "\n" for line in lines), capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def answers_in(stdout: str) -> list[str]:
    return [part.split("\nyou> ")[0].strip() for part in stdout.split("assistant> ")[1:]]


def test_chat_remembers_turns_resets_and_exits(exported):
    stdout = chat(exported, [FIRST, SECOND, "/reset", SECOND, "/exit", "never read"])
    model, tokenizer = load_base_model(str(exported))
    user = [{"role": "user", "content": FIRST}]
    first = greedy_answer(model, tokenizer, user)
    multi_turn = greedy_answer(model, tokenizer, [*user, {"role": "assistant", "content": first},
                                                  {"role": "user", "content": SECOND}])
    fresh = greedy_answer(model, tokenizer, [{"role": "user", "content": SECOND}])
    assert multi_turn != fresh  # otherwise the test could not tell memory from reset
    assert answers_in(stdout) == [first, multi_turn, fresh]
    assert "(new dialogue)" in stdout and stdout.count("you> ") == 5  # nothing is read after /exit


def test_chat_system_message_and_rejected_input(exported):
    system = "Speak in French."
    stdout = chat(exported, [FIRST, "Say [INST] twice", "/help"], "--system", system)
    model, tokenizer = load_base_model(str(exported))
    expected = greedy_answer(model, tokenizer, [{"role": "system", "content": system},
                                                {"role": "user", "content": FIRST}])
    assert answers_in(stdout) == [expected]
    assert "(message not sent: message 2 (user) contains the reserved tag '[INST]'" in stdout
    assert "(unknown command '/help'" in stdout
    assert stdout.endswith("you> \n")  # end of input quits cleanly


def test_session_streams_the_same_text_it_keeps(exported):
    model, tokenizer = load_base_model(str(exported))
    session = ChatSession(model, tokenizer, max_new_tokens=MAX_NEW, temperature=0.6, top_p=0.9, seed=3)
    streamed = "".join(session.reply(FIRST))
    assert len(streamed.strip()) > 0 and session.messages[-1] == {"role": "assistant", "content": streamed.strip()}
    # Sampling is seeded per reply: the same seed and dialogue give the same answer.
    again = ChatSession(model, tokenizer, max_new_tokens=MAX_NEW, temperature=0.6, top_p=0.9, seed=3)
    assert "".join(again.reply(FIRST)) == streamed


def test_session_drops_oldest_turns_to_fit_the_context(exported):
    _, tokenizer = load_base_model(str(exported))
    torch.manual_seed(0)
    model = Llama(ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=tokenizer.vocab_size, multiple_of=16,
                              max_seq_len=64))
    session = ChatSession(model, tokenizer, max_new_tokens=24, temperature=0.0)  # prompts get 40 tokens
    for _ in range(3):
        "".join(session.reply(FIRST))
        assert len(encode_dialog(tokenizer, session.messages).ids) <= 64
    assert session.turns_dropped >= 1 and len(session.messages) < 6
    assert session.messages[0] == {"role": "user", "content": FIRST}
    dropped, dialogue = session.turns_dropped, list(session.messages)
    with pytest.raises(ValueError, match="shorten it"):
        session.reply("word " * 60)
    # a refused message drops nothing (the old CLI then printed a false "2 oldest turn(s) dropped")
    assert (session.turns_dropped, session.messages) == (dropped, dialogue)


def run_chat(folder, lines, monkeypatch, capsys, *extra) -> str:
    """`llama-course chat` in this process, `input()` answering `lines` (an exception is raised, not returned)."""
    import argparse
    import builtins

    from llama_course.commands import chat as chat_command

    parser = argparse.ArgumentParser()
    chat_command.add_arguments(parser)
    feed = iter(lines)

    def fake_input(prompt):
        print(prompt, end="")
        line = next(feed)
        if isinstance(line, BaseException):
            raise line
        return line

    monkeypatch.setattr(builtins, "input", fake_input)
    chat_command.run(parser.parse_args(["--checkpoint", str(folder), "--temperature", "0", "--max-new-tokens",
                                    str(MAX_NEW), *extra]))
    return capsys.readouterr().out


def test_ctrl_c_stops_the_answer_and_a_second_ctrl_c_at_the_prompt_quits(exported, monkeypatch, capsys):
    from llama_course import chat_session

    real_stream, calls = chat_session.generate_stream, []

    def interrupted_once(*args, **kwargs):
        calls.append(1)
        for index, token in enumerate(real_stream(*args, **kwargs)):
            if len(calls) == 1 and index == 2:
                raise KeyboardInterrupt  # Ctrl-C in the middle of the first answer
            yield token

    monkeypatch.setattr(chat_session, "generate_stream", interrupted_once)
    stdout = run_chat(exported, [SECOND, FIRST, KeyboardInterrupt(), "never read"], monkeypatch, capsys)
    assert "(answer stopped and not kept; Ctrl-C again at the prompt, or Ctrl-D, quits)" in stdout
    model, tokenizer = load_base_model(str(exported))
    # the stopped answer was not kept: the next one is the single-turn answer
    assert answers_in(stdout)[-1] == greedy_answer(model, tokenizer, [{"role": "user", "content": FIRST}])
    assert stdout.count("you> ") == 3 and stdout.endswith("you> \n")


def test_ctrl_c_at_the_prompt_of_the_real_command_exits_cleanly(exported):
    import signal
    import time

    command = [sys.executable, "-m", "llama_course.cli", "chat", "--checkpoint", str(exported)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"})
    seen, deadline = b"", time.monotonic() + 120
    while not seen.endswith(b"you> ") and time.monotonic() < deadline:
        seen += process.stdout.read1(64)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0 and b"Traceback" not in stderr, stderr.decode()


def test_default_is_the_shipped_sft_model():
    stdout = chat(None, [FIRST])
    assert "the shipped SFT model" in stdout
    model, tokenizer = load_base_model(str(SHIPPED_SFT_DIR))
    assert answers_in(stdout) == [greedy_answer(model, tokenizer, [{"role": "user", "content": FIRST}])]
