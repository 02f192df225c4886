"""`python -m llama_course.toyworld.build_tokenizer` rebuilds the shipped toy tokenizer byte for byte."""

from llama_course.toyworld import build_tokenizer
from llama_course.toyworld.assets import TOY_TOKENIZER_PATH


def test_rebuild_command_reproduces_the_shipped_tokenizer_byte_for_byte(tmp_path):
    # fails when a generator changed without rebuilding: run `python -m llama_course.toyworld.build_tokenizer`
    path = tmp_path / "toy.model"
    build_tokenizer.main(["--output", str(path)])
    assert path.read_bytes() == TOY_TOKENIZER_PATH.read_bytes()
