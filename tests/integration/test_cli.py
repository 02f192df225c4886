import subprocess
import sys

from llama_course.cli import main


def test_presets_prints_paper_parameter_counts(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "llama2-70b" in out and "68,976,648,192" in out
    assert "llama1-33b" in out and "32,528,943,616" in out


def test_help_lists_commands():
    result = subprocess.run([sys.executable, "-m", "llama_course.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "presets" in result.stdout


def test_convert_meta_to_hf_and_back_keeps_the_logits(tmp_path):
    import torch

    from llama_course.config import ModelConfig
    from llama_course.interop import load_meta_checkpoint, save_meta_checkpoint
    from llama_course.model import Llama

    torch.manual_seed(0)
    model = Llama(ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=50, multiple_of=16)).eval()
    save_meta_checkpoint(model, tmp_path / "meta", num_shards=2)
    assert main(["convert", str(tmp_path / "meta"), str(tmp_path / "hf"), "--from", "meta", "--to", "hf",
                 "--max-seq-len", "2048"]) == 0
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back"), "--from", "hf", "--to", "meta"]) == 0
    tokens = torch.tensor([[1, 7, 3, 9]])
    back = load_meta_checkpoint(tmp_path / "back", max_seq_len=2048).eval()
    torch.testing.assert_close(back(tokens).logits, model(tokens).logits, rtol=0, atol=1e-6)
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back"), "--from", "hf", "--to", "meta"]) == 2
