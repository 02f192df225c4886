"""Every chapter follows the chapter template and its two files (MyST .md and .ipynb) say the same thing.

- The `.md` (what the book renders) and the `.ipynb` (what Colab and GitHub show, and nbval runs) hold the
  same cells with the same tags, compared as jupytext reads them, so a change made to one file only is caught.
- The `.ipynb` carries the outputs of one clean run (`llama-course sync-notebooks chapters/NN_name.md`): every
  code cell ran, none wrote to stderr, and at least one cell is tagged `nbval-check-output` for nbval to compare.
- Readers never see test machinery: no `# NBVAL_CHECK_OUTPUT` or `# fmt: skip` comment in a cell.
- Code fits the book's text column (`COLUMN` characters, measured in tests/book/test_book.py).
- The repository URL is written once, as `repository.url` in `_config.yml`. A notebook on Colab runs without
  that file, so the first cell of every chapter carries the URL as a literal; this test fails when the cell
  differs from `colab_install_cell(url)` or any Colab/GitHub link to the course points elsewhere (the sync
  command writes both from `_config.yml`).
"""

from pathlib import Path

import jupytext
import pytest

from llama_course.notebooks import (
    CHECK_TAG,
    COURSE_LINK,
    colab_install_cell,
    output_problems,
    repository,
    with_repository,
)

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md"))
COLUMN = 72  # characters of code that fit the text column of a 1280-pixel-wide window (tests/book/test_book.py)
MACHINERY = ("NBVAL_CHECK_OUTPUT", "# fmt: skip", "# fmt: off", "# noqa")


def cells(notebook) -> list[tuple[str, str, list[str]]]:
    return [(cell.cell_type, cell.source.strip(), cell.metadata.get("tags", [])) for cell in notebook.cells]


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
def test_ipynb_stores_the_outputs_of_one_clean_run(chapter: Path):
    notebook = jupytext.read(chapter.with_suffix(".ipynb"))
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    checked = [cell for cell in code if CHECK_TAG in cell.metadata.get("tags", [])]
    assert checked, f"{chapter.name}: no cell tagged {CHECK_TAG}; print at least one deterministic number"
    for cell in code:
        first_line = cell.source.splitlines()[0] if cell.source else ""
        assert cell.execution_count is not None, (
            f"{chapter.name}: cell '{first_line}' was not run; `llama-course sync-notebooks chapters/{chapter.name}`"
        )
        problems = output_problems(cell)
        assert not problems, f"{chapter.name}: cell '{first_line}': {problems}"
    assert any(cell.outputs for cell in checked), f"{chapter.name}: the checked cells store no output to compare"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_cells_show_no_test_machinery_and_fit_the_column(chapter: Path):
    for cell in jupytext.read(chapter).cells:
        if cell.cell_type != "code":
            continue
        first_line = cell.source.splitlines()[0] if cell.source else ""
        for marker in MACHINERY:
            assert marker not in cell.source, (
                f"{chapter.name}: cell '{first_line}' shows {marker!r} to readers; use a cell tag (:tags:) instead"
            )
        wide = [line for line in cell.source.splitlines() if len(line) > COLUMN]
        assert not wide, f"{chapter.name}: lines wider than the book's column ({COLUMN} characters): {wide}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_first_cell_installs_the_package_on_colab_from_the_configured_url(chapter: Path):
    code = [cell for cell in jupytext.read(chapter).cells if cell.cell_type == "code"]
    expected = colab_install_cell(repository()[0])
    assert code and code[0].source.strip() == expected, (
        f"{chapter.name}: the first code cell must be exactly the Colab install cell (`llama-course "
        f"sync-notebooks` writes it):\n{expected}"
    )


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_links_to_the_course_use_the_configured_repository_and_the_exercise(chapter: Path):
    url, branch = repository()
    configured = url.removeprefix("https://github.com/")
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


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_ends_with_what_to_remember_its_exercise_and_references(chapter: Path):
    headings = [line for line in chapter.read_text().splitlines() if line.startswith("## ")]
    assert headings[-3:] == ["## What to remember", "## Exercise", "## References"], (
        f"{chapter.name} ends with {headings[-3:]}; every chapter ends with What to remember, Exercise, References"
    )


def test_a_fork_changes_only_config_yml(tmp_path: Path):
    """`_config.yml` names the repository; syncing writes it into every install cell and course link."""
    fork_url, fork_branch = "https://github.com/someone/llama-fork", "dev"
    config = tmp_path / "_config.yml"
    config.write_text(f"repository:\n  url: {fork_url}\n  branch: {fork_branch}\n")
    assert repository(config) == (fork_url, fork_branch)
    text = with_repository(CHAPTERS[0].read_text(), fork_url, fork_branch)
    code = [cell for cell in jupytext.reads(text, fmt="md:myst").cells if cell.cell_type == "code"]
    assert code[0].source.strip() == colab_install_cell(fork_url)
    assert {link for link in COURSE_LINK.findall(text)} == {("someone/llama-fork", "dev")}
    config.write_text("repository:\n  url: https://gitlab.com/someone/fork\n  branch: main\n")
    with pytest.raises(ValueError, match="must be https://github.com/OWNER/NAME"):
        repository(config)


@pytest.mark.parametrize("exercise", sorted((ROOT / "exercises").glob("[0-9][0-9]_*.md")), ids=lambda p: p.stem)
def test_exercise_pages_fit_the_column(exercise: Path):
    """The book renders each student notebook as a page: its code fits the column as a chapter's does."""
    for cell in jupytext.read(exercise).cells:
        wide = [line for line in cell.source.splitlines() if cell.cell_type == "code" and len(line) > COLUMN]
        assert not wide, f"{exercise.name}: lines wider than the book's column ({COLUMN} characters): {wide}"
