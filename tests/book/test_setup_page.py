"""The setup page's commands, run as written on a fresh virtual environment (book/setup.md, "On your own machine").

The page tells a reader to clone the repository, make a virtual environment, install the course with every
extra (on Linux without a GPU, the CPU build of PyTorch first) and open the chapters with `jupyter lab
chapters/`. This test runs those very lines in bash, in order, with two stand-ins: `git clone` fetches a local
bare repository holding this checkout instead of the course's address, and where download.pytorch.org cannot
be reached (a machine without internet) the CPU-torch line installs this environment's torch from the
configured package index instead. `jupyter lab chapters/` (on a free port, with no browser to open, and with
`--allow-root` when the test runs as root) must start a server that answers with JupyterLab.
Takes a few minutes (pip installs every dependency, from its cache when it can).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from test_colab_install import bare_repository, copy_of_checkout

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "book" / "setup.md"
BASH_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)
CPU_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def section(title: str) -> str:
    text = SETUP.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def commands(title: str) -> list[str]:
    return [line.strip() for block in BASH_BLOCK.findall(section(title)) for line in block.splitlines()
            if line.strip() and not line.startswith("#")]


def reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=10)
    except OSError:
        return False
    return True


def test_the_page_documents_the_cpu_torch_step_and_jupyter_lab():
    lines = commands("On your own machine")
    assert CPU_TORCH in lines, f"book/setup.md no longer shows `{CPU_TORCH}`"
    install = lines.index('pip install -e ".[all]"')
    assert lines.index("source .venv/bin/activate") < install < lines.index("jupyter lab chapters/")


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a fresh install of every extra: minutes on a quiet machine, more on a busy one
def test_setup_commands_work_as_written_on_a_fresh_environment(tmp_path: Path):
    lines = commands("On your own machine")
    clone = next(line for line in lines if line.startswith("git clone "))
    bare = bare_repository(copy_of_checkout(tmp_path / "checkout"), tmp_path / "llama-course.git")
    lines[lines.index(clone)] = f"git clone {bare} llama-course"
    if not reachable("https://download.pytorch.org/whl/cpu/"):
        lines[lines.index(CPU_TORCH)] = f"pip install torch=={torch.__version__}"
    # the CPU-torch line goes right after the activation, as the page says
    lines.insert(lines.index("source .venv/bin/activate") + 1, lines.pop(lines.index(next(
        line for line in lines if line.startswith("pip install torch")))))
    build = lines.index("jupyter-book build . -W -n --keep-going")
    lines.pop(build)  # the book build runs in CI's own step (.ci/test); here only the setup
    lab = lines.pop(lines.index("jupyter lab chapters/"))
    assert lines[-1] == 'pip install -e ".[all]"', lines

    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{Path(sys.base_prefix) / 'bin'}:{env['PATH']}"  # `python` is a plain Python, not this venv
    env.update(JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               BROWSER="true")
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    setup = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert setup.returncode == 0, f"{script}\nfailed:\n{setup.stdout[-3000:]}\n{setup.stderr[-3000:]}"

    with socket.socket() as probe:  # a free port: 8888 may be taken on a shared machine
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Jupyter refuses to run as root (CI's container, this sandbox) unless told: a reader's account is not root
    as_root = " --allow-root" if os.geteuid() == 0 else ""
    server = subprocess.Popen(["bash", "-c", f"source .venv/bin/activate && exec {lab} --port {port}{as_root}"],
                              cwd=tmp_path / "llama-course", env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, log = time.monotonic() + 180, []
        while time.monotonic() < deadline and server.poll() is None:
            log.append(server.stdout.readline())
            if match := re.search(r"(http://(?:localhost|127\.0\.0\.1):\d+/lab\?token=\w+)", log[-1]):
                assert b"JupyterLab" in first_page(match.group(1), deadline), "".join(log)[-3000:]
                break
        else:
            log += server.stdout.readlines() if server.poll() is not None else []
            pytest.fail(f"`{lab}` did not start a server:\n{''.join(log)[-3000:]}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def first_page(url: str, deadline: float) -> bytes:
    """The page at `url`, asked again while the server that printed it is not yet answering (a busy machine)."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=30) as page:
                assert page.status == 200, page.status
                return page.read()
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def test_the_ci_workflow_runs_ci_run_and_publishes_the_book_it_built():
    import yaml

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    steps = workflow["jobs"]["test"]["steps"]
    assert any(step.get("run") == "bash .ci/run" for step in steps), "the test job must run .ci/run, as CI does"
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    assert "jupyter-book build . " in (ROOT / ".ci" / "test").read_text(), ".ci/test no longer builds the book"
    assert workflow["jobs"]["publish"]["needs"] == "test"
