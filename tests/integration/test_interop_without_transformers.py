"""The interop package saves and loads Hugging Face folders in a fresh interpreter where transformers cannot load."""

import subprocess
import sys


def test_interop_never_imports_transformers(tmp_path):
    script = (
        "import sys; sys.modules['transformers'] = None\n"  # any import of transformers would now fail
        "from llama_course.interop import load_hf_checkpoint, save_hf_checkpoint\n"
        "from llama_course.config import ModelConfig\nfrom llama_course.model import Llama\n"
        "config = ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=16, max_seq_len=8)\n"
        f"save_hf_checkpoint(Llama(config), {str(tmp_path / 'hf')!r})\n"
        f"assert load_hf_checkpoint({str(tmp_path / 'hf')!r}).config.dim == 32\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
