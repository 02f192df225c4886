"""llama_course: Llama 1 and Llama 2 rebuilt piece by piece, the package behind the Llama course book.

    import llama_course as lc
    model = lc.Llama(lc.PRESETS["tiny"])
"""

from llama_course.chat import ChatTokens, encode_dialog, render_dialog, validate_dialog
from llama_course.config import PRESETS, ModelConfig, count_parameters
from llama_course.generation import generate, generate_stream
from llama_course.layers.kv_cache import KVCache
from llama_course.model import IGNORE_INDEX, CausalLMOutput, Llama
from llama_course.tokenizer import Tokenizer, tokens_per_character, train_tokenizer

configs = PRESETS  # the name DESIGN.md uses: lc.Llama(lc.configs["llama2-7b"])

__version__ = "0.1.0"

__all__ = [
    "IGNORE_INDEX",
    "PRESETS",
    "CausalLMOutput",
    "ChatTokens",
    "KVCache",
    "Llama",
    "ModelConfig",
    "Tokenizer",
    "configs",
    "count_parameters",
    "encode_dialog",
    "generate",
    "generate_stream",
    "render_dialog",
    "tokens_per_character",
    "train_tokenizer",
    "validate_dialog",
]
