"""The toy world: a seeded, procedural stand-in for the Llama papers' data, with known ground truth.

Stories for pretraining (`generate_stories`, graded by `story_validity`), instruction tasks
(`generate_tasks`), unsafe and borderline requests (`generate_safety_prompts`), dialogues under system
constraints (`generate_dialogues`, graded by `adherence`), and preference pairs from simulated annotators
(`generate_preferences`). The true rewards are `helpfulness`, `safety` and `is_safety_prompt`; the
shipped tokenizer is `toy_tokenizer()`; `load_corpus` also reaches TinyStories and HH-RLHF online.
"""

from llama_course.toyworld.annotators import STRENGTHS, Annotator, generate_preferences, strength_of
from llama_course.toyworld.assets import toy_tokenizer
from llama_course.toyworld.corpus import CorpusUnavailableError, load_corpus
from llama_course.toyworld.dialogues import Constraint, adherence, generate_dialogues, parse_constraints
from llama_course.toyworld.language import from_toy_french, to_toy_french
from llama_course.toyworld.rewards import combined_reward, helpfulness, is_safety_prompt, safety
from llama_course.toyworld.safety import generate_safety_prompts
from llama_course.toyworld.stories import generate_stories
from llama_course.toyworld.story_grammar import check_story, story_validity
from llama_course.toyworld.tasks import generate_tasks

__all__ = [
    "STRENGTHS",
    "Annotator",
    "Constraint",
    "CorpusUnavailableError",
    "adherence",
    "check_story",
    "combined_reward",
    "from_toy_french",
    "generate_dialogues",
    "generate_preferences",
    "generate_safety_prompts",
    "generate_stories",
    "generate_tasks",
    "helpfulness",
    "is_safety_prompt",
    "load_corpus",
    "parse_constraints",
    "safety",
    "story_validity",
    "strength_of",
    "to_toy_french",
    "toy_tokenizer",
]
