"""Serve MathJax from the built book, so that a local build renders its math without a network.

Sphinx loads MathJax 3 from a CDN by default: a book opened from disk offline shows raw TeX. When the package
`jupyter-server-mathjax` (a MathJax 2.7 distribution, in the `book` extra) is installed, this extension copies
it into the build's `_static/mathjax/` and points `mathjax_path` at it, with MathJax 2's combined TeX
configuration (Sphinx supports a local `MathJax.js?config=...`). Without the package the CDN default stays.
"""

import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config

MATHJAX_DIR = "mathjax"


def _mathjax_static() -> Path | None:
    try:
        import jupyter_server_mathjax
    except ImportError:
        return None
    return Path(jupyter_server_mathjax.__file__).parent / "static"


def _use_local_mathjax(app: Sphinx, config: Config) -> None:
    if _mathjax_static() is not None:
        config.mathjax_path = f"{MATHJAX_DIR}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
        # tex2jax: Sphinx's own MathJax 2 defaults (math in the elements of class "math", inside an ignored
        # document); fonts: the distribution carries STIX-Web only (as Jupyter configures it), else every page
        # asks for the TeX fonts and logs a 404
        config.mathjax2_config = {
            "tex2jax": {"inlineMath": [["$", "$"], ["\\(", "\\)"]], "processEscapes": True,
                        "ignoreClass": "document", "processClass": "math|output_area"},
            "HTML-CSS": {"availableFonts": [], "webFont": "STIX-Web", "imageFont": None, "preferredFont": None},
            "SVG": {"font": "STIX-Web"},
        }


def _copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    source = _mathjax_static()
    if exception is None and source is not None and app.builder.format == "html":
        shutil.copytree(source, Path(app.outdir) / "_static" / MATHJAX_DIR, dirs_exist_ok=True)


def setup(app: Sphinx) -> dict[str, bool]:
    app.connect("config-inited", _use_local_mathjax)
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
