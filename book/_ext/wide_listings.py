"""Listings of the package's source span the text column and its margin, so that their lines fit unbroken.

The package is formatted to 120 columns; the text column holds 72 characters of code. The code of every
`literalinclude` gets sphinx-book-theme's `full-width` class: on a screen 992 pixels wide or more the theme
widens it over the right margin and hides the page's contents while it is in view (its caption keeps the
column's width). book/_static/book.css sets its code at 12 pixels, so that 120 columns fit at a laptop's 1280,
and wraps the lines on a narrower screen.
"""

from docutils import nodes
from sphinx.application import Sphinx

FULL_WIDTH = "full-width"  # sphinx-book-theme's class for content that spans the margin


def _widen_listings(app: Sphinx, doctree: nodes.document) -> None:
    for block in doctree.findall(nodes.literal_block):
        if "source" in block.attributes:  # a literalinclude: a code-block or a notebook cell names no file
            block["classes"].append(FULL_WIDTH)


def setup(app: Sphinx) -> dict[str, bool]:
    app.connect("doctree-read", _widen_listings)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
