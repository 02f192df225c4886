"""Build the toy world's tokenizer (`llama-course build-tokenizer [--vocab-size 1024]`).

Trains a Llama-style SentencePiece BPE (`llama_course.tokenizer.train_tokenizer`: byte fallback, split
digits) on a fixed, seeded mix of everything the toy world writes: stories, task prompts and answers, safety
prompts with their refusals and answers, and chat-formatted dialogues (which bring the toy French and the
`[INST]` tags). The result ships as `llama_course/assets/toy_tokenizer.model`, loaded by `toy_tokenizer()`.

Why 1024 pieces: the world has about 360 English words and names and 340 toy-French words. After the 4
special pieces, 256 byte pieces and about 70 characters, 1024 leaves about 700 merges: enough for every
frequent English word (with its leading space) to be one piece, while toy-French words, rarer, often take
two. A story is then about 1.3 tokens per word, and the embedding and output layers (2 x 1024 x dim) stay a
small part of a model of a few million parameters, which is where the course wants its parameters.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from llama_course.chat import dialog_turns
from llama_course.tokenizer import Tokenizer, train_tokenizer
from llama_course.toyworld.assets import TOY_TOKENIZER_PATH, TOY_VOCAB_SIZE
from llama_course.toyworld.dialogues import generate_dialogues
from llama_course.toyworld.safety import sample_safety_prompt
from llama_course.toyworld.stories import generate_stories
from llama_course.toyworld.tasks import generate_tasks


def tokenizer_training_texts(
    seed: int = 0, n_stories: int = 8000, n_tasks: int = 4000, n_safety: int = 1000, n_dialogues: int = 2000
) -> Iterator[str]:
    """The fixed mix of toy-world texts the shipped tokenizer is trained on (same seed, same texts)."""
    yield from generate_stories(n_stories, seed)["text"]
    tasks = generate_tasks(n_tasks, seed)
    for prompt, answer in zip(tasks["prompt"], tasks["answer"], strict=True):
        yield f"{prompt} {answer}"
    rng = random.Random(seed)
    for _ in range(n_safety):
        example = sample_safety_prompt(rng)
        yield f"{example.prompt} {example.answer} {example.bad_answer}"
    for messages in generate_dialogues(n_dialogues, seed)["messages"]:
        yield "".join(turn.text for turn in dialog_turns(messages))


def build_toy_tokenizer(model_path: str | Path = TOY_TOKENIZER_PATH, vocab_size: int = TOY_VOCAB_SIZE) -> Tokenizer:
    """Train the toy tokenizer on `tokenizer_training_texts()` and write it to `model_path`."""
    return train_tokenizer(tokenizer_training_texts(), vocab_size, model_path, num_threads=1)
