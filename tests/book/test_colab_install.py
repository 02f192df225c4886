"""A stand-in for Colab: the chapters' install cell, run in a fresh virtual environment that already has torch.

Colab comes with its own (CUDA) build of torch, and the first cell of every chapter must install the course
without replacing it. Here a fresh venv gets this environment's torch (pip finds the same wheel), then the
install cell, taken verbatim from a chapter, runs with `google.colab` present in `sys.modules`; only its
repository URL is swapped for a local bare git repository holding this checkout (the files git tracks or would
track, committed), so pip runs the cell's own `llama-course @ git+URL` requirement: it clones the repository
and builds the package from it. The package must import, the cell must say what it does and when it is done,
and torch must be the very same installation: same version, same files untouched. Takes a minute or two (it
installs the package's dependencies from the package index or pip's cache).
"""

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import jupytext
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
GIT_REQUIREMENT = 'f"llama-course @ git+{REPOSITORY_URL}"'
URL_LINE = re.compile(r'^REPOSITORY_URL = "[^"]*"$', re.M)


def run(*command: str | Path, **kwargs) -> str:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def install_cell() -> str:
    chapter = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md"))[0]
    code = [cell.source for cell in jupytext.read(chapter).cells if cell.cell_type == "code"]
    assert code and GIT_REQUIREMENT in code[0], f"{chapter.name}: first cell does not install {GIT_REQUIREMENT}"
    return code[0]


def copy_of_checkout(destination: Path) -> Path:
    files = run("git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", cwd=ROOT).split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def bare_repository(checkout: Path, destination: Path) -> Path:
    """A bare git repository whose one commit holds `checkout`: what a git host serves to `git clone`."""
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
    run("git", "init", "-q", "-b", "main", cwd=checkout)
    run("git", "add", "-A", cwd=checkout)
    run("git", *identity, "commit", "-q", "-m", "the course", cwd=checkout)
    run("git", "clone", "-q", "--bare", checkout, destination)
    return destination


def torch_fingerprint(python: Path) -> str:
    """torch's version, where it lives, and the mtimes of its RECORD and __init__.py, as seen by `python`."""
    probe = (
        "import importlib.metadata as m, os, torch; "
        "record = next(f for f in m.distribution('torch').files if f.name == 'RECORD').locate(); "
        "print(torch.__version__, torch.__file__, os.stat(record).st_mtime_ns, os.stat(torch.__file__).st_mtime_ns)"
    )
    return run(python, "-c", probe).strip()


@pytest.mark.slow
def test_install_cell_installs_the_package_and_keeps_torch(tmp_path: Path):
    environment = tmp_path / "colab-venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(environment)
    python = environment / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", f"torch=={torch.__version__}")
    before = torch_fingerprint(python)
    assert before.startswith(f"{torch.__version__} {environment}"), before

    bare = bare_repository(copy_of_checkout(tmp_path / "checkout"), tmp_path / "llama-course.git")
    # file://localhost/...: the pip that a fresh venv bundles (23.2) refuses `git+file:///...` (no host)
    url = f"file://localhost{bare}"
    cell, replaced = URL_LINE.subn(f'REPOSITORY_URL = "{url}"', install_cell())
    assert replaced == 1, "the install cell has no `REPOSITORY_URL = \"...\"` line"
    pretend_colab = "import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    printed = run(python, "-c", pretend_colab + cell, cwd=tmp_path, env=env)
    assert f"pip install 'llama-course @ git+{url}'" in printed, printed
    assert re.search(r"^done: llama-course \S+ installed in \d+ s$", printed, re.M), printed

    assert torch_fingerprint(python) == before, "the install cell reinstalled or upgraded torch"
    imported = run(python, "-c", "import llama_course, llama_course.model; print(llama_course.__file__)",
                   cwd=tmp_path, env=env)
    assert imported.startswith(str(environment)), f"llama_course imported from {imported}, not from the venv"


def test_install_cell_does_nothing_outside_colab(tmp_path: Path):
    completed = subprocess.run([sys.executable, "-c", install_cell()], capture_output=True, text=True,
                               cwd=tmp_path, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "" and completed.stderr == ""
