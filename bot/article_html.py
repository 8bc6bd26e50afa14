"""A help article's Markdown as HTML, for the help centre and the console's preview.

CommonMark plus tables by ``markdown-it-py`` with raw HTML off: whatever HTML an operator types
is shown as text, and links with a ``javascript:``, ``vbscript:``, ``file:`` or ``data:`` target
are not made links (markdown-it's own link check). Table cells lose their alignment ``style``
attribute, which the pages' Content-Security-Policy would refuse. The result is safe to put in a
page as is.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markupsafe import Markup


def _without_styles(state: StateCore) -> None:
    for token in state.tokens:
        if token.attrs and "style" in token.attrs:
            del token.attrs["style"]


_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")
_MARKDOWN.core.ruler.push("without_styles", _without_styles)


def article_html(markdown: str) -> Markup:
    """The article body rendered to HTML (marked safe: raw HTML in it was escaped)."""
    return Markup(_MARKDOWN.render(markdown))
