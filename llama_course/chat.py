"""The Llama 2-Chat dialogue format, exactly as Meta's `llama/generation.py` (`chat_completion`) builds it.

A dialogue is a list of messages `{"role": "system" | "user" | "assistant", "content": str}`. Meta's
format (Llama 2, section 3; the tags come from the reference code, the paper does not print them):

- an optional system message is folded into the first user message: `B_SYS + system + E_SYS + user`;
- each completed (user, assistant) pair is ONE tokenizer call on
  `f"{B_INST} {user.strip()} {E_INST} {answer.strip()} "` with BOS and EOS;
- a final user message without an answer is one call on `f"{B_INST} {user.strip()} {E_INST}"` with BOS
  only: the model writes the answer next.

The calls' token lists are concatenated. BOS and EOS are ids added by the tokenizer, never the text
"<s>" or "</s>" (which would encode as ordinary characters); `render_dialog` writes them out only to show
the format. For supervised fine-tuning (Llama 2, section 3.1: "we zero-out the loss on tokens from the
user prompt") `encode_dialog` also returns which tokens belong to an assistant answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llama_course.tokenizer import Tokenizer

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
SPECIAL_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")
ROLES = ("system", "user", "assistant")

Message = Mapping[str, str]


@dataclass(frozen=True)
class ChatTurn:
    """One tokenizer call of the format: a user prompt and, once the turn is complete, its answer.

    `prompt` is `f"{B_INST} {user} {E_INST}"`; `answer` is `f" {answer} "` (the spaces are Meta's), or
    None for the final, unanswered user turn. The call encodes `prompt + answer` with BOS, plus EOS when
    the answer is there.
    """

    prompt: str
    answer: str | None

    @property
    def text(self) -> str:
        return self.prompt + (self.answer or "")


@dataclass(frozen=True)
class ChatTokens:
    """Token ids of a dialogue and, position by position, whether the token is part of an assistant answer.

    `answer_mask[t]` is True on the tokens of each answer and on the EOS that closes it (so a fine-tuned
    model learns to stop), False on BOS, on the `[INST] ... [/INST]` prompt and on the system message.
    """

    ids: list[int]
    answer_mask: list[bool]


def validate_dialog(messages: Sequence[Message]) -> None:
    """Check a dialogue against the rules of Meta's `chat_completion`; raise on the first broken one.

    Roles: an optional `system` message first, then `user`, `assistant`, `user`, ... alternating, starting
    with `user`. The dialogue may end on either role: on `user` to prompt the model, on `assistant` to
    train on a complete dialogue. Content: a non-empty string (after stripping whitespace) containing none of
    the tags `[INST]`, `[/INST]`, `<<SYS>>`, `<</SYS>>`, which would forge turn boundaries (Meta answers
    such a request with an error message instead of a completion).

    Raises TypeError for a message that is not a mapping or a content that is not a string, ValueError
    otherwise; each message names the index and role of the offending message.
    """
    if len(messages) == 0:
        raise ValueError("the dialog is empty: it needs at least one user message")
    first_turn = 1 if _role_of(messages, 0) == "system" else 0
    for index, message in enumerate(messages):
        role = _role_of(messages, index)
        if role == "system" and index != 0:
            raise ValueError(f"message {index} has role 'system': a system message may only come first")
        expected = ("user", "assistant")[(index - first_turn) % 2] if index >= first_turn else "system"
        if role != expected:
            raise ValueError(
                f"message {index} has role {role!r} where {expected!r} was expected: after an optional "
                "system message, roles must alternate user, assistant, user, ... starting with user"
            )
        content = message["content"]
        if not isinstance(content, str):
            raise TypeError(f"message {index} ({role}) has content of type {type(content).__name__}, expected str")
        if not content.strip():
            raise ValueError(f"message {index} ({role}) has empty content: every message needs some text")
        for tag in SPECIAL_TAGS:
            if tag in content:
                raise ValueError(
                    f"message {index} ({role}) contains the reserved tag {tag!r}: the chat format uses it to "
                    "mark turns, so it may not appear in a message; remove or rewrite it"
                )
    if len(messages) == first_turn:
        raise ValueError("the dialog has a system message but no user message")


def _role_of(messages: Sequence[Message], index: int) -> str:
    message = messages[index]
    if not isinstance(message, Mapping):
        raise TypeError(
            f"message {index} is a {type(message).__name__}, expected a dict with keys 'role' and 'content'"
        )
    missing = [key for key in ("role", "content") if key not in message]
    if missing:
        raise ValueError(f"message {index} lacks the key(s) {missing}: each message needs 'role' and 'content'")
    role = message["role"]
    if role not in ROLES:
        raise ValueError(f"message {index} has role {role!r}: roles are 'system', 'user' and 'assistant'")
    return role


def dialog_turns(messages: Sequence[Message]) -> list[ChatTurn]:
    """Validate `messages` and split them into the tokenizer calls of Meta's format, in order.

    The system message is folded into the first user message before stripping, as Meta does:
    `(B_SYS + system + E_SYS + user).strip()`, so the system text itself keeps its inner whitespace.
    """
    validate_dialog(messages)
    contents = [message["content"] for message in messages]
    if messages[0]["role"] == "system":
        contents = [B_SYS + contents[0] + E_SYS + contents[1], *contents[2:]]
    turns = []
    for start in range(0, len(contents), 2):
        prompt = f"{B_INST} {contents[start].strip()} {E_INST}"
        answer = f" {contents[start + 1].strip()} " if start + 1 < len(contents) else None
        turns.append(ChatTurn(prompt, answer))
    return turns


def render_dialog(messages: Sequence[Message]) -> str:
    """The dialogue as text, with BOS and EOS written as `<s>` and `</s>`: for reading, never for encoding.

    >>> render_dialog([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])
    '<s>[INST] Hi [/INST] Hello! </s>'
    """
    return "".join(f"<s>{turn.text}" + ("</s>" if turn.answer is not None else "") for turn in dialog_turns(messages))


def encode_dialog(tokenizer: Tokenizer, messages: Sequence[Message]) -> ChatTokens:
    """Token ids of a dialogue in Meta's format, and the mask of assistant-answer tokens (see `ChatTokens`).

    Each turn is encoded in one call, prompt and answer together, exactly as Meta does. The answer's tokens
    are then those after the tokens of the prompt alone: SentencePiece pieces never run across the space
    after `[/INST]` (a space only ever starts a piece), so the prompt's tokens are a prefix of the turn's;
    this is checked, not assumed. The answer tokens begin with the piece that carries that space (e.g.
    '▁Hello') and end with the piece of Meta's trailing space, then EOS.
    """
    ids: list[int] = []
    answer_mask: list[bool] = []
    for turn in dialog_turns(messages):
        prompt_ids = tokenizer.encode(turn.prompt, bos=True)
        if turn.answer is None:
            turn_ids = prompt_ids
        else:
            turn_ids = tokenizer.encode(turn.text, bos=True, eos=True)
            if turn_ids[: len(prompt_ids)] != prompt_ids:
                raise RuntimeError(
                    f"this tokenizer has a piece that runs across the end of the prompt {turn.prompt!r} into "
                    "the answer, so answer tokens cannot be told from prompt tokens; use a tokenizer whose "
                    "pieces split at whitespace, e.g. one from train_tokenizer (Llama's options)"
                )
        ids += turn_ids
        answer_mask += [index >= len(prompt_ids) for index in range(len(turn_ids))]
    return ChatTokens(ids, answer_mask)
