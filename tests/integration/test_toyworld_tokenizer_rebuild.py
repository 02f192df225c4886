"""`llama-course build-tokenizer` rebuilds the shipped toy tokenizer byte for byte."""

from llama_course.cli import main
from llama_course.toyworld.assets import TOY_TOKENIZER_PATH


def test_rebuild_command_reproduces_the_shipped_tokenizer_byte_for_byte(tmp_path):
    # fails when a generator changed without rebuilding: run `llama-course build-tokenizer`
    path = tmp_path / "toy.model"
    assert main(["build-tokenizer", "--output", str(path)]) == 0
    assert path.read_bytes() == TOY_TOKENIZER_PATH.read_bytes()
