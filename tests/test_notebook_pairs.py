"""Every chapter follows the chapter template and its two files (MyST .md and .ipynb) say the same thing.

- The `.md` (what the book renders) and the `.ipynb` (what Colab opens and nbval runs) hold the same cells,
  compared as jupytext reads them, so a change made to one file only is caught.
- The `.ipynb` carries no outputs except those of the `# NBVAL_CHECK_OUTPUT` cells, which nbval compares with
  a fresh run. `llama-course sync-notebooks chapters/NN_name.md` rewrites it from the `.md`.
- The repository URL is written once, as `repository.url` in `_config.yml`. A notebook on Colab runs without
  that file, so the first cell of every chapter carries the URL as a literal; this test fails when the cell
  differs from `colab_install_cell(url)` or any Colab/GitHub link to the course points elsewhere.
"""

import re
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md"))
CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"
# A link into the course's own files, on GitHub or opened in Colab: group 1 is owner/name, group 2 the branch.
COURSE_LINK = re.compile(
    r"https://(?:colab\.research\.google\.com/github|github\.com)/([\w.-]+/[\w.-]+)/blob/([\w.-]+)/"
    r"(?:chapters|exercises|book|llama_course)/"
)


def repository() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]


def repository_url() -> str:
    return repository()["url"]


def colab_install_cell(url: str) -> str:
    """The first code cell of every chapter: on Colab only, install the package and keep Colab's torch."""
    return f'''# Runs only on Google Colab: install the course package from its repository, keeping Colab's PyTorch.
import sys

REPOSITORY_URL = "{url}"  # repository.url in _config.yml
if "google.colab" in sys.modules:
    import importlib.metadata
    import pathlib
    import subprocess
    import tempfile

    # Pin torch to the version already installed: pip keeps it or fails, and never downloads another one.
    constraints = pathlib.Path(tempfile.mkdtemp()) / "constraints.txt"
    constraints.write_text(f"torch=={{importlib.metadata.version('torch')}}\\n")
    package = f"llama-course @ git+{{REPOSITORY_URL}}"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--constraint", str(constraints), package]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"installing {{package}} failed:\\n{{result.stdout}}\\n{{result.stderr}}")'''


def cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_there_are_chapters():
    assert CHAPTERS, f"no chapters/NN_name.md found under {ROOT / 'chapters'}"


def test_every_ipynb_has_its_md():
    orphans = [p.name for p in (ROOT / "chapters").glob("*.ipynb") if not p.with_suffix(".md").exists()]
    assert not orphans, f"{orphans} have no .md twin: the book renders the .md, so write it (jupytext --to md:myst)"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_md_and_ipynb_hold_the_same_cells(chapter: Path):
    ipynb = chapter.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run `llama-course sync-notebooks chapters/{chapter.name}`"
    markdown, notebook = jupytext.read(chapter), jupytext.read(ipynb)
    assert markdown.metadata.get("jupytext", {}).get("formats") == "ipynb,md:myst", (
        f"{chapter.name}: the front matter must pair it with jupytext (jupytext: formats: ipynb,md:myst)"
    )
    md_cells, ipynb_cells = cells(markdown), cells(notebook)
    for index, (md_cell, ipynb_cell) in enumerate(zip(md_cells, ipynb_cells, strict=False)):
        assert md_cell == ipynb_cell, (
            f"{chapter.name} and {ipynb.name} differ at cell {index}; re-sync with "
            f"`llama-course sync-notebooks chapters/{chapter.name}`"
        )
    assert len(md_cells) == len(ipynb_cells), f"{chapter.name}: {len(md_cells)} cells, {ipynb.name}: {len(ipynb_cells)}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_ipynb_stores_only_the_outputs_nbval_checks(chapter: Path):
    notebook = jupytext.read(chapter.with_suffix(".ipynb"))
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    checked = [cell for cell in code if CHECK_MARKER in cell.source]
    assert checked, f"{chapter.name}: no cell marked {CHECK_MARKER}; print at least one deterministic number"
    for cell in code:
        first_line = cell.source.splitlines()[0] if cell.source else ""
        if cell in checked:
            assert cell.outputs, f"{chapter.name}: checked cell '{first_line}' has no stored output to compare"
        else:
            assert not cell.outputs, f"{chapter.name}: cell '{first_line}' has outputs; commit it without them"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_first_cell_installs_the_package_on_colab_from_the_configured_url(chapter: Path):
    code = [cell for cell in jupytext.read(chapter).cells if cell.cell_type == "code"]
    expected = colab_install_cell(repository_url())
    assert code and code[0].source.strip() == expected, (
        f"{chapter.name}: the first code cell must be exactly the Colab install cell:\n{expected}"
    )


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_links_to_the_course_use_the_configured_repository_and_the_exercise(chapter: Path):
    configured, branch = repository_url().removeprefix("https://github.com/"), repository()["branch"]
    text = chapter.read_text()
    wrong = sorted({link for link in COURSE_LINK.findall(text) if link != (configured, branch)})
    assert not wrong, f"{chapter.name} links to {wrong}; the course is {configured}, branch {branch} (_config.yml)"
    exercise = (f"https://colab.research.google.com/github/{configured}/blob/{branch}/exercises/"
                f"{chapter.with_suffix('.ipynb').name}")
    assert exercise in text, f"{chapter.name} must link to its exercise: {exercise}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_is_in_the_table_of_contents(chapter: Path):
    toc = (ROOT / "_toc.yml").read_text()
    assert f"file: chapters/{chapter.stem}\n" in toc, f"add `- file: chapters/{chapter.stem}` to _toc.yml"
