"""Chapter notebooks: run one as the book build runs it, and write its paired `.ipynb` for Colab and nbval.

A chapter is written as `chapters/NN_name.md` (jupytext `md:myst`). Its `.ipynb` twin is what Colab and
GitHub show and what nbval runs: the same cells with the outputs of one run (figures included), so a reader
sees the results before running anything. nbval (`--nbval-lax`) compares a fresh run only against the cells
tagged `nbval-check-output` (in the `.md`: `:tags: [nbval-check-output]` under the cell's fence).

The repository is named once, as `repository.url` and `repository.branch` in `_config.yml`. A notebook on
Colab runs without that file, so syncing writes it into the chapter's first cell (the Colab install cell,
`colab_install_cell`) and into every Colab/GitHub link to the course's files.

Syncing refuses a chapter whose run writes to stderr (a warning, a progress bar), raises, shows a widget or
prints a path of this machine: the book would show the same on its page.

    llama-course sync-notebooks                          # every chapter
    llama-course sync-notebooks chapters/02_rmsnorm.md   # one chapter

tests/book/test_notebook_pairs.py checks the result; benchmarks/notebooks.py times `execute_chapter`.
"""

import re
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
import yaml
from nbclient import NotebookClient

CHECK_TAG = "nbval-check-output"
ROOT = Path(__file__).resolve().parents[1]
CHAPTERS_DIR = ROOT / "chapters"
CONFIG = ROOT / "_config.yml"
# A link into the course's own files, on GitHub or opened in Colab: group 1 is owner/name, group 2 the branch.
COURSE_LINK = re.compile(
    r"https://(?:colab\.research\.google\.com/github|github\.com)/([\w.-]+/[\w.-]+)/blob/([\w.-]+)/"
    r"(?=chapters/|exercises/|book/|llama_course/)"
)
INSTALL_URL_LINE = re.compile(r'^REPOSITORY_URL = "[^"]*"$', re.M)
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def repository(config: Path = CONFIG) -> tuple[str, str]:
    """(url, branch) of `repository` in `_config.yml`: the one place a fork names itself."""
    settings = yaml.safe_load(config.read_text())["repository"]
    url, branch = settings["url"].rstrip("/"), settings["branch"]
    if not url.startswith("https://github.com/") or url.count("/") != 4:
        raise ValueError(f"repository.url={url!r} in {config} must be https://github.com/OWNER/NAME")
    return url, branch


def colab_install_cell(url: str) -> str:
    """The first code cell of every chapter and exercise: on Colab only, install the course package from
    `url` with pip, keeping the PyTorch that Colab has, and say what it does and when it is done."""
    return f'''# On Google Colab only: install the course package from its repository,
# keeping Colab's PyTorch (repository.url in the book's _config.yml).
import sys

REPOSITORY_URL = "{url}"
if "google.colab" in sys.modules:
    import importlib.metadata
    import pathlib
    import subprocess
    import tempfile
    import time

    # Pin torch to the installed version: pip keeps it or stops with an
    # error, and never downloads another one.
    torch_version = importlib.metadata.version("torch")
    constraints = pathlib.Path(tempfile.mkdtemp()) / "constraints.txt"
    constraints.write_text(f"torch=={{torch_version}}\\n")
    package = f"llama-course @ git+{{REPOSITORY_URL}}"
    print(f"pip install {{package!r}} (keeping torch {{torch_version}})")
    print("this takes about a minute...", flush=True)
    start = time.perf_counter()
    command = [sys.executable, "-m", "pip", "install", "--quiet"]
    command += ["--constraint", str(constraints), package]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        log = f"{{result.stdout}}\\n{{result.stderr}}"
        raise RuntimeError(f"installing {{package}} failed:\\n{{log}}")
    version = importlib.metadata.version("llama-course")
    seconds = time.perf_counter() - start
    print(f"done: llama-course {{version}} installed in {{seconds:.0f}} s")'''


def with_repository(text: str, url: str, branch: str) -> str:
    """A chapter's text with the install cell's URL and every link to the course's files set to `url`, `branch`."""
    text = INSTALL_URL_LINE.sub(f'REPOSITORY_URL = "{url}"', text)
    name = url.removeprefix("https://github.com/")
    return COURSE_LINK.sub(lambda link: link.group(0).replace(f"{link[1]}/blob/{link[2]}/", f"{name}/blob/{branch}/"),
                           text)


def chapter_paths(paths: list[Path] | None = None) -> list[Path]:
    """The given chapter .md files (checked), or every `chapters/NN_name.md` of the checkout."""
    if not paths:
        return sorted(CHAPTERS_DIR.glob("[0-9][0-9]_*.md"))
    for path in paths:
        if path.suffix != ".md" or not path.exists():
            raise FileNotFoundError(f"{path} is not an existing chapter .md file; pass chapters/NN_name.md")
    return [path.resolve() for path in paths]


def execute_chapter(markdown_path: Path, timeout_s: int = 300) -> tuple[nbformat.NotebookNode, float]:
    """Run the chapter top to bottom in a fresh kernel of the current environment, with `chapters/` as working
    directory (as the book build and nbval run it); returns the executed notebook and the seconds it took."""
    notebook = jupytext.read(markdown_path)
    client = NotebookClient(notebook, timeout=timeout_s, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(markdown_path.parent)}})
    start = time.perf_counter()
    client.execute()
    return notebook, time.perf_counter() - start


def local_paths() -> list[str]:
    """Paths of this machine that must never appear on a page: the checkout, the environment, home, temp."""
    paths = {str(ROOT), sys.prefix, str(Path.home()), tempfile.gettempdir(), "/tmp/"}
    return sorted(path for path in paths if len(path) > 1)


def output_problems(cell: nbformat.NotebookNode) -> list[str]:
    """What in the outputs of one executed code cell must not reach a page (empty when it is clean)."""
    problems = []
    for output in cell.get("outputs", []):
        text = output.get("text", "") + "".join(
            value for key, value in output.get("data", {}).items() if key.startswith("text/") and isinstance(value, str)
        )
        if output.output_type == "error":
            problems.append(f"raises {output.ename}: {output.evalue}")
        elif output.get("name") == "stderr":
            problems.append(f"writes to stderr: {text.strip()[:200]!r}")
        elif WIDGET_MIME in output.get("data", {}):
            problems.append("shows a widget (a tqdm.auto progress bar?): the book cannot render it offline")
        problems += [f"prints the local path {path!r}" for path in local_paths() if path in text]
    return problems


def sync_chapter(markdown_path: Path, timeout_s: int = 300) -> float:
    """Set the repository in the chapter, execute it and write its .ipynb with every output; returns seconds."""
    url, branch = repository()
    text = markdown_path.read_text()
    if with_repository(text, url, branch) != text:
        markdown_path.write_text(with_repository(text, url, branch))
    executed, seconds = execute_chapter(markdown_path, timeout_s)
    problems = []
    for index, cell in enumerate(executed.cells):
        cell.id = f"cell-{index}"  # stable ids: re-syncing an unchanged chapter leaves its ids unchanged
        if cell.cell_type == "code":
            first_line = cell.source.splitlines()[0] if cell.source else ""
            problems += [f"cell {index} ({first_line!r}) {problem}" for problem in output_problems(cell)]
    if problems:
        raise ValueError(f"{markdown_path.name}: the page would show what a reader must not see; fix the cause:\n  "
                         + "\n  ".join(problems))
    jupytext.write(executed, markdown_path.with_suffix(".ipynb"), fmt="ipynb")
    return seconds
