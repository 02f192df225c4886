"""A multi-turn dialogue with one model in the Llama 2-Chat format, its answers streamed (`llama-course chat`).

Every turn re-encodes the whole dialogue with `llama_course.chat.encode_dialog` (Meta's `chat_completion`
does the same) and samples the answer token by token with `generate_stream`, yielding each piece as soon as
it is decoded. Earlier answers stay in the context until `reset()`. When the dialogue no longer fits the
model's context, the oldest (user, assistant) turns are dropped, the system message is kept. Sampling
defaults are those of Meta's `example_chat_completion.py`: temperature 0.6, top-p 0.9.
"""

from __future__ import annotations

from collections.abc import Iterator

from llama_course.chat import Message, encode_dialog, validate_dialog
from llama_course.generation import check_sampling, generate_stream
from llama_course.model import Llama
from llama_course.tokenizer import Tokenizer


class ChatSession:
    """A multi-turn dialogue with one model: `reply(text)` streams the answer and remembers the turn."""

    def __init__(
        self,
        model: Llama,
        tokenizer: Tokenizer,
        *,
        system: str | None = None,
        max_new_tokens: int = 96,
        temperature: float = 0.6,
        top_p: float | None = 0.9,
        seed: int = 0,
    ) -> None:
        if system is not None:
            validate_dialog([{"role": "system", "content": system}, {"role": "user", "content": "-"}])
        check_sampling(temperature, top_p=top_p)
        if not 0 < max_new_tokens < model.config.max_seq_len:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be in [1, {model.config.max_seq_len - 1}] (the "
                             "model's context, less room for the prompt)")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.messages: list[Message] = []
        self.turns_dropped = 0  # (user, assistant) turns dropped from the dialogue to fit the context
        self._replies = 0

    def reset(self) -> None:
        """Forget the dialogue (the system message stays)."""
        self.messages = []

    def _fit_context(self, messages: list[Message]) -> tuple[list[int], list[Message]]:
        """The encoded dialogue and the messages it keeps: the oldest turns dropped until the answer fits."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        room = self.model.config.max_seq_len - self.max_new_tokens
        while True:
            ids = encode_dialog(self.tokenizer, system + messages).ids
            if len(ids) <= room:
                return ids, messages
            if len(messages) == 1:
                raise ValueError(f"the message is {len(ids)} tokens long with the system prompt; at most {room} "
                                 f"fit with max_new_tokens={self.max_new_tokens}: shorten it")
            messages = messages[2:]

    def reply(self, text: str) -> Iterator[str]:
        """Stream the model's answer to the user message `text` as pieces of text; then keep the turn.

        A message the chat format rejects (empty, or containing `[INST]`, `<<SYS>>`...) raises ValueError
        before anything is generated, and the dialogue is unchanged. An empty answer is not kept, nor its
        prompt (the format has no empty messages); neither is an answer stopped before its end. Turns dropped
        to fit the context leave the dialogue only when the answer is kept.
        """
        messages = [*self.messages, {"role": "user", "content": text}]
        validate_dialog(messages)
        prompt, kept = self._fit_context(messages)
        return self._stream(kept, prompt, dropped=(len(messages) - len(kept)) // 2)

    def _stream(self, messages: list[Message], prompt: list[int], dropped: int) -> Iterator[str]:
        generated: list[int] = []
        shown = ""
        steps = generate_stream(self.model, [prompt], self.max_new_tokens, temperature=self.temperature,
                                top_p=self.top_p, eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id,
                                seed=self.seed + self._replies)
        for step in steps:
            token = int(step[0])
            if token == self.tokenizer.eos_id:
                break
            generated.append(token)
            text_so_far = self.tokenizer.decode(generated)
            if not text_so_far.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                yield text_so_far[len(shown):]
                shown = text_so_far
        answer = self.tokenizer.decode(generated)
        yield answer[len(shown):]
        self._replies += 1
        if answer.strip():
            self.messages = [*messages, {"role": "assistant", "content": answer.strip()}]
            self.turns_dropped += dropped
