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
