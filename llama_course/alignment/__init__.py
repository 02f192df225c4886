"""Alignment: from the pretrained base model to Llama 2-Chat (Llama 2, section 3).

- `sft_data`: conversations in the chat format, answer-only loss masks, packed blocks (section 3.1);
- `sft`: the fine-tuning recipe, its config and the `llama-course sft` command;
- `sft_eval`: greedy answers to prompts, and held-out helpfulness by task family with the toy world's checker.

The measurements shipped with the SFT model (loss curves, the answers-only ablation) are `experiments.sft`.
"""

from llama_course.alignment.sft import SFTConfig, SFTDataConfig, load_base_model, load_sft_results, run_sft
from llama_course.alignment.sft_data import encode_conversation, encode_conversations, pack_sft
from llama_course.alignment.sft_eval import answer_prompts, helpfulness_by_family

__all__ = [
    "SFTConfig",
    "SFTDataConfig",
    "answer_prompts",
    "encode_conversation",
    "encode_conversations",
    "helpfulness_by_family",
    "load_base_model",
    "load_sft_results",
    "pack_sft",
    "run_sft",
]
