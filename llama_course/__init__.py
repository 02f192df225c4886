"""llama_course: Llama 1 and Llama 2 rebuilt piece by piece, the package behind the Llama course book."""

__version__ = "0.1.0"
