"""`llama-course chat`: talk to a model in the terminal, in the Llama 2-Chat format, with streamed tokens.

The dialogue is a `chat_session.ChatSession`: multi-turn, earlier answers kept in the context until `/reset`, the
oldest turns dropped when it no longer fits. Commands: `/reset` starts a new dialogue (same system message),
`/exit` (or end of input, Ctrl-D) quits. Ctrl-C during an answer stops it and returns to the prompt; Ctrl-C at
the prompt quits. Sampling defaults are those of Meta's `example_chat_completion.py`: temperature 0.6, top-p 0.9.

    llama-course chat                                   # the shipped SFT model
    llama-course chat --system "Speak in French." --temperature 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llama_course.arguments import bounded_number
from llama_course.chat_session import ChatSession
from llama_course.model import Llama
from llama_course.tokenizer import Tokenizer

HELP_LINE = "/reset starts a new dialogue, /exit quits"


def load_chat_model(checkpoint: str | Path | None = None, device: str = "cpu") -> tuple[Llama, Tokenizer]:
    """The model to chat with: an exported folder, a shipped name, a training run, or (None) the shipped SFT."""
    from llama_course.alignment.sft import SHIPPED_SFT_DIR, load_base_model

    model, tokenizer = load_base_model(str(checkpoint if checkpoint is not None else SHIPPED_SFT_DIR))
    return model.to(device).eval(), tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="exported model folder, shipped name (e.g. base) or training run; "
                                             "default: the shipped SFT model")
    parser.add_argument("--system", help="system message, folded into the first user turn (<<SYS>> ... <</SYS>>)")
    parser.add_argument("--temperature", type=bounded_number(float, 0), default=0.6, help="0 for greedy decoding")
    parser.add_argument("--top-p", type=bounded_number(float, 0, 1, low_open=True), default=0.9,
                        help="nucleus sampling threshold, in (0, 1]")
    parser.add_argument("--max-new-tokens", type=bounded_number(int, 1), default=96, help="longest answer, in tokens")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (reply n uses seed + n)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps")


def run(args: argparse.Namespace) -> None:
    """The interactive loop: read a line, stream the answer; `/reset`, `/exit`, end of input or Ctrl-C to quit."""
    from llama_course.training.distributed import pick_device

    device = pick_device(args.device)  # an unknown or missing device fails before the model loads
    model, tokenizer = load_chat_model(args.checkpoint, str(device))
    session = ChatSession(model, tokenizer, system=args.system, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    print(f"Chatting with {args.checkpoint or 'the shipped SFT model'} in the Llama 2-Chat format; {HELP_LINE}.")
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):  # Ctrl-D, or Ctrl-C at the prompt
            print()
            return
        except UnicodeDecodeError as error:
            print(f"(message not sent: the input is not valid UTF-8: {error.reason} at byte {error.start})")
            continue
        command = line.strip()
        if not command:
            continue
        if command == "/exit":
            return
        if command == "/reset":
            session.reset()
            print("(new dialogue)")
            continue
        if command.startswith("/"):
            print(f"(unknown command {command!r}: {HELP_LINE})")
            continue
        dropped = session.turns_dropped
        try:
            pieces = session.reply(line)
            print("assistant> ", end="", flush=True)
            for piece in pieces:
                print(piece, end="", flush=True)
            print()
        except ValueError as error:
            print(f"(message not sent: {error})")
        except KeyboardInterrupt:
            print("\n(answer stopped and not kept; Ctrl-C again at the prompt, or Ctrl-D, quits)")
        if session.turns_dropped > dropped:
            print(f"({session.turns_dropped - dropped} oldest turn(s) dropped to fit the context)")
