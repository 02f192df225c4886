"""The building blocks of a Llama transformer, one idea per module."""
