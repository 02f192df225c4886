"""The rendered book, read as a reader reads it: pages clean, code and figures readable, exercises present.

Static checks of the HTML: no output that a reader must not see (stderr, a warning, a traceback, a progress
bar, a widget, a path of the build machine), every chapter links to its exercise page, which holds the tasks
and their stubs but never a solution. In headless Chromium, at the window size of a laptop (1280 pixels): no
JavaScript error, no broken image, a figure per chapter, every code cell, output, table and display equation
within the text column (an output line wider than the column wraps: book/_static/book.css; no row of a printed
text table may, since a wrapped row breaks the table's columns), every listing of the package's source (120
columns, over the column and its margin: book/_ext/wide_listings.py) with its lines unbroken, and every figure
shown at `MIN_FIGURE_SCALE` of its natural size or more (a figure drawn wider than the column is scaled down,
and its fonts with it).

Needs the built book (`jupyter-book build . -W -n --keep-going`, which CI runs before pytest) and Debian's
`chromium` and `chromium-driver`. The pages are served from 127.0.0.1, so "the book's own" resources are
those of that origin.

The book loads nothing from the internet: MathJax 3 comes with it (the `sphinx-mathjax-offline` extension
copies it into `_static/mathjax`), so every equation must be typeset, and fit the column, without a network.
The only console error tolerated is the 404 of `/favicon.ico` at the server root: Chromium requests it by
itself for a page that names no icon, and the book names none. Every other console error fails the test, and
so does a broken image: the book ships every image it shows, and every resource a page loads is from the
book's own origin.
"""

import functools
import http.server
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llama_course.notebooks import local_paths

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SCREENSHOT = ROOT / "_build" / "chapter_screenshot.png"
MIN_FIGURE_SCALE = 0.8  # rendered width / natural width of a figure
# What a reader must never see in an output: a warning, a traceback, a tqdm bar ("40%|####  | 4/10").
FORBIDDEN_OUTPUT = re.compile(r"Traceback \(most recent call last\)|\b\w*Warning\b:|\d+%\|.*\|\s*\d+/\d+")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1600")

pytestmark = pytest.mark.skipif(
    not HTML.is_dir(), reason=f"{HTML} does not exist: build the book first (jupyter-book build . -W -n --keep-going)"
)

IMAGES_STATE = """
return Array.from(document.images).map(img => ({
    src: img.currentSrc || img.src, complete: img.complete, width: img.naturalWidth,
    rendered: img.getBoundingClientRect().width, figure: img.closest('.cell_output') !== null}));
"""
# Code, outputs, tables, listings and equations that do not fit their box scroll sideways: the reader sees them
# cut at the edge. A listing may pass the text column, not the page.
OVERFLOW_STATE = """
const article = document.querySelector('article.bd-article');
if (!article) return [];
const column = article.getBoundingClientRect().right;
const page = document.querySelector('.bd-main').getBoundingClientRect().right;
const boxes = article.querySelectorAll(
    '.cell_input pre, .cell_output pre, table, div.math mjx-container, .literal-block-wrapper pre');
const cut = Array.from(boxes).filter(box => {
        // a listing wraps its lines only where the screen is too narrow: measure them unbroken
        const listing = box.closest('.literal-block-wrapper');
        if (listing) box.style.whiteSpace = 'pre';
        const overflows = box.scrollWidth > box.clientWidth + 1
                          || box.getBoundingClientRect().right > (listing ? page : column) + 1;
        box.style.whiteSpace = '';
        return overflows;
    })
    .map(box => ({kind: box.closest('.cell_input') ? 'code' : box.closest('.cell_output') ? 'output'
                        : box.closest('.literal-block-wrapper') ? 'listing'
                        : box.closest('div.math') ? 'equation' : box.tagName.toLowerCase(),
                  text: box.textContent.trim().split('\\n')[0].slice(0, 80),
                  width: box.scrollWidth, column: box.clientWidth}));
// An output line wider than the column wraps (book.css), which a sentence survives and a table does not: its
// rows fold and its columns break. A text table is an output with two or more rows, lines whose cells are
// separated by runs of spaces; each row must fit. Characters are as wide as the output's widest line, unbroken
// in a box as wide as its content, divided by its length (a monospaced font).
const rows = [];
for (const pre of article.querySelectorAll('.cell_output pre')) {
    const lines = pre.textContent.split('\\n');
    const table = lines.filter(line => /\\S {2,}\\S/.test(line.trim()));
    if (table.length < 2 || pre.clientWidth === 0) continue;
    const style = getComputedStyle(pre);
    const padding = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
    const room = pre.clientWidth - padding;
    Object.assign(pre.style, {whiteSpace: 'pre', width: 'max-content', maxWidth: 'none'});
    const charWidth = (pre.clientWidth - padding) / Math.max(...lines.map(line => line.length));
    Object.assign(pre.style, {whiteSpace: '', width: '', maxWidth: ''});
    rows.push(...table.filter(row => row.length * charWidth > room + 1).map(row => ({
        kind: 'table row', text: row.trim().slice(0, 80), width: Math.ceil(row.length * charWidth + padding),
        column: pre.clientWidth})));
}
return cut.concat(rows);
"""


def book_pages() -> list[Path]:
    skipped = {"_static", "_sources", "_images"}
    return sorted(p for p in HTML.rglob("*.html") if not skipped & set(p.relative_to(HTML).parts))


def chapter_names() -> list[str]:
    return sorted(p.stem for p in (ROOT / "chapters").glob("[0-9][0-9]_*.md"))


def soup(page: Path):
    from bs4 import BeautifulSoup

    return BeautifulSoup(page.read_text(), "html.parser")


def book_pages_in(folder: str) -> list[Path]:
    pages = [p for p in book_pages() if p.relative_to(HTML).parts[0] == folder]
    assert pages, f"no page rendered under {HTML / folder}"
    return pages


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "apt-get install chromium chromium-driver (Debian's packages) first"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


# MathJax 3 typesets after the page loads; its startup promise settles when the page's math is typeset. Sphinx
# loads MathJax on the pages with math only; on one of those a MathJax that did not load leaves the promise out.
MATH_TYPESET = """
const done = arguments[arguments.length - 1];
if (!window.MathJax || !window.MathJax.startup) { done(false); return; }
MathJax.startup.promise.then(() => done(true), error => done(String(error)));
"""
# The page's math elements (Sphinx's span.math and div.math), those MathJax left untouched, and TeX delimiters
# left in the page's text outside code (a `\(` that no math element holds).
MATH_STATE = """
const article = document.querySelector('article.bd-article');
if (!article) return {typeset: 0, raw: [], macros: [], delimiters: []};
const math = Array.from(article.querySelectorAll('span.math, div.math'));
const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT, {acceptNode: node =>
    node.parentElement.closest('pre, code, mjx-container, script, style') ? NodeFilter.FILTER_REJECT
                                                                          : NodeFilter.FILTER_ACCEPT});
const delimiters = [];
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const found = node.textContent.match(/\\\\[()\\[\\]]|\\$\\$/);
    if (found) delimiters.push(node.textContent.trim().slice(0, 60));
}
return {typeset: article.querySelectorAll('mjx-container').length,
        raw: math.filter(node => !node.querySelector('mjx-container')).map(node => node.textContent.slice(0, 60)),
        // a backslash in typeset math is a macro MathJax did not read (`\\_` in \\text{} without textmacros)
        macros: Array.from(article.querySelectorAll('mjx-container')).map(node => node.textContent)
            .filter(text => text.includes('\\\\')).map(text => text.slice(0, 60)),
        delimiters: delimiters};
"""
RESOURCES = "return performance.getEntriesByType('resource').map(entry => entry.name);"


def load(browser, url: str) -> list[dict]:
    """Open `url`, wait until every image finished loading and the math is typeset; return the images' state."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    wait = WebDriverWait(browser, 20)
    wait.until(lambda b: b.execute_script("return document.readyState") == "complete")
    wait.until(lambda b: all(img["complete"] for img in b.execute_script(IMAGES_STATE)))
    browser.set_script_timeout(60)
    if browser.execute_script("return document.querySelector('span.math, div.math') !== null"):
        typeset = browser.execute_async_script(MATH_TYPESET)
        assert typeset is True, f"{url}: MathJax did not typeset the page's math ({typeset or 'not loaded'})"
    return browser.execute_script(IMAGES_STATE)


def console_errors(entries: list[dict], origin: str) -> list[str]:
    """The browser log's errors, but for Chromium's own request of the missing `/favicon.ico`."""
    return [entry["message"] for entry in entries
            if entry["level"] == "SEVERE" and entry["message"].split(" ", 1)[0] != f"{origin}/favicon.ico"]


def test_every_book_page_chapter_and_exercise_is_rendered():
    pages = {p.relative_to(HTML).as_posix() for p in book_pages()}
    for page in ("book/preface.html", "book/setup.html", "book/grading.html", "book/references.html"):
        assert page in pages, f"{page} missing from {HTML}; is it listed in _toc.yml?"
    assert chapter_names(), "no chapter found in chapters/"
    for name in chapter_names():
        assert f"chapters/{name}.html" in pages, f"chapters/{name}.html was not rendered: add it to _toc.yml"
        assert f"exercises/{name}.html" in pages, f"exercises/{name}.html was not rendered: add it to _toc.yml"


def test_pages_show_no_stderr_warning_traceback_progress_bar_or_local_path():
    problems = []
    for page in book_pages():
        relative, html = page.relative_to(HTML).as_posix(), soup(page)
        for output in html.select(".cell_output"):
            text = output.get_text(" ")
            if output.select(".stderr, .traceback, .error"):
                problems.append(f"{relative}: an output written to stderr or an error: {text.strip()[:160]!r}")
            if match := FORBIDDEN_OUTPUT.search(text):
                problems.append(f"{relative}: an output shows {match.group(0)!r}")
            if output.select('script[type="application/vnd.jupyter.widget-view+json"]'):
                problems.append(f"{relative}: an output is a widget (a tqdm.auto bar?), blank without a kernel")
        text = html.get_text(" ")
        problems += [f"{relative}: shows the local path {path!r}" for path in local_paths() if path in text]
    assert not problems, "\n".join(problems)


def test_each_chapter_links_to_its_exercise_page_which_has_tasks_and_no_solution():
    for name in chapter_names():
        chapter = soup(HTML / "chapters" / f"{name}.html")
        links = {a.get("href", "").split("#")[0] for a in chapter.select("article a")}
        assert f"../exercises/{name}.html" in links, f"chapters/{name}.html does not link to its exercise page"
        exercise = " ".join(soup(HTML / "exercises" / f"{name}.html").select_one("article").get_text(" ").split())
        assert "raise NotImplementedError" in exercise, f"exercises/{name}.html shows no task stub"
        assert "BEGIN SOLUTION" not in exercise, f"exercises/{name}.html shows a solution"


def test_pages_load_offline_without_javascript_errors_or_broken_images(server, browser):
    problems = []
    for page in book_pages():
        relative = page.relative_to(HTML).as_posix()
        browser.get_log("browser")  # drop what the previous page left
        images = load(browser, f"{server}/{relative}")
        problems += [f"{relative}: JavaScript console error: {message}"
                     for message in console_errors(browser.get_log("browser"), server)]
        problems += [f"{relative}: loads {url} from outside the book"
                     for url in browser.execute_script(RESOURCES) if not url.startswith(server)]
        problems += [f"{relative}: broken image {img['src']}" for img in images if img["width"] == 0]
        if relative.startswith("chapters/"):
            figures = [img for img in images if img["figure"] and img["width"] > 0]
            if not figures:
                problems.append(f"{relative}: chapter page without a figure (no image among the cell outputs)")
    assert not problems, "\n".join(problems)


def test_math_is_typeset_offline(server, browser):
    problems, typeset = [], 0
    for page in book_pages():
        relative = page.relative_to(HTML).as_posix()
        load(browser, f"{server}/{relative}")
        state = browser.execute_script(MATH_STATE)
        typeset += state["typeset"]
        problems += [f"{relative}: math left as TeX source: {raw!r}" for raw in state["raw"]]
        problems += [f"{relative}: a TeX delimiter in the text: {text!r}" for text in state["delimiters"]]
        problems += [f"{relative}: a TeX macro shown as text in an equation: {text!r}" for text in state["macros"]]
    assert typeset > 0, "no equation of the book was typeset: is MathJax served from _static/mathjax?"
    assert not problems, "\n".join(problems)


def test_code_outputs_tables_listings_and_equations_fit(server, browser):
    problems = []
    for page in book_pages():
        relative = page.relative_to(HTML).as_posix()
        load(browser, f"{server}/{relative}")
        problems += [f"{relative}: {box['kind']} {box['width']} px wide in a {box['column']} px box: {box['text']!r}"
                     for box in browser.execute_script(OVERFLOW_STATE)]
    assert not problems, "\n".join(problems)


def test_figures_render_at_a_readable_scale(server, browser):
    problems = []
    for page in book_pages_in("chapters"):
        relative = page.relative_to(HTML).as_posix()
        for image in load(browser, f"{server}/{relative}"):
            if image["figure"] and image["width"] and image["rendered"] < MIN_FIGURE_SCALE * image["width"]:
                problems.append(f"{relative}: a figure shown at {image['rendered'] / image['width']:.0%} of its "
                                f"{image['width']} px (draw it narrower: at most two panels a row)")
    assert not problems, "\n".join(problems)


def test_screenshot_of_a_chapter(server, browser):
    chapter = book_pages_in("chapters")[0]
    load(browser, f"{server}/chapters/{chapter.name}")
    browser.execute_script("document.querySelector('.cell_output img').scrollIntoView({block: 'center'})")
    SCREENSHOT.unlink(missing_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT)), f"could not save {SCREENSHOT}"
    assert SCREENSHOT.stat().st_size > 10_000, f"{SCREENSHOT} is suspiciously small for a rendered page"
