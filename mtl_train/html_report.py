"""One self-contained HTML page: sections of paragraphs, tables and PNG images, viewable offline.

Images are embedded as base64 ``data:`` URIs and the style sheet is inline; the page has no script and refers to
no other file or URL. Every string put into the page is escaped (:func:`html.escape`). :mod:`mtl_train.report`
decides the content (``report.html`` of a sweep); this module only lays it out: a title, a few detail lines, a
table of contents, then each section with its blocks in order.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; max-width: 1200px;
       margin: 2em auto; padding: 0 1.5em; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin: 1.4em 0 0.4em; }
.details { color: #555; margin: 0.1em 0; }
nav { background: #f6f7f9; border: 1px solid #e1e4e8; padding: 0.6em 1.2em; margin: 1.2em 0; }
nav ul { margin: 0.2em 0; padding-left: 1.2em; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-size: 0.85em; }
.scroll { overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 0.3em 0.45em; text-align: right; }
td { white-space: pre; }
th { background: #f6f7f9; }
th:first-child, td:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafbfc; }
figure { margin: 0.6em 0 1.6em; }
figure img { max-width: 100%; border: 1px solid #e1e4e8; }
figcaption { color: #555; font-size: 0.9em; }
"""


@dataclass
class HtmlParagraph:
    text: str


@dataclass
class HtmlTable:
    caption: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class HtmlImage:
    caption: str
    png: bytes


@dataclass
class HtmlSection:
    title: str
    blocks: list[HtmlParagraph | HtmlTable | HtmlImage]


def anchor(*parts: str) -> str:
    """An ``id`` made of the letters, digits and dashes of ``parts``."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def cell_html(cell: str) -> str:
    """A table cell's text, escaped; ``mean ± std`` on two lines (``±`` starts the second) so wide tables fit."""
    return escape(cell).replace(" ± ", "<br>± ")


def header_html(cell: str) -> str:
    """A column name, escaped, that may break after ``/`` and ``_`` (``denoise/psnr``, ``wall_time_s``)."""
    return re.sub(r"([/_])", r"\1<wbr>", escape(cell))


def table_html(table: HtmlTable, table_id: str) -> str:
    head = "".join(f"<th>{header_html(cell)}</th>" for cell in table.header)
    body = "".join("<tr>" + "".join(f"<td>{cell_html(cell)}</td>" for cell in row) + "</tr>\n" for row in table.rows)
    return (f'<h3 id="{table_id}">{escape(table.caption)}</h3>\n'
            f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table></div>')


def image_html(image: HtmlImage, image_id: str) -> str:
    data = base64.b64encode(image.png).decode("ascii")
    return (f'<figure id="{image_id}"><img src="data:image/png;base64,{data}" alt="{escape(image.caption)}">'
            f"<figcaption>{escape(image.caption)}</figcaption></figure>")


def html_page(title: str, details: Sequence[str], sections: Sequence[HtmlSection]) -> str:
    """The page: ``title``, ``details`` (one line each), a table of contents (sections, their tables and images),
    then the sections."""
    toc, body = [], []
    for number, section in enumerate(sections, 1):
        section_id = f"s{number}-{anchor(section.title)}"
        entries = []
        body.append(f'<section>\n<h2 id="{section_id}">{escape(section.title)}</h2>')
        for index, block in enumerate(section.blocks):
            block_anchor = f"{section_id}-{index}"
            if isinstance(block, HtmlParagraph):
                body.append(f"<p>{escape(block.text)}</p>")
                continue
            entries.append(f'<li><a href="#{block_anchor}">{escape(block.caption)}</a></li>')
            body.append(table_html(block, block_anchor) if isinstance(block, HtmlTable)
                        else image_html(block, block_anchor))
        body.append("</section>")
        sub = f"<ul>{''.join(entries)}</ul>" if entries else ""
        toc.append(f'<li><a href="#{section_id}">{escape(section.title)}</a>{sub}</li>')
    lines = "\n".join(f'<p class="details">{escape(line)}</p>' for line in details)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{escape(title)}</h1>\n{lines}\n"
            f"<nav><strong>Contents</strong>\n<ul>{''.join(toc)}</ul></nav>\n" + "\n".join(body)
            + "\n</body>\n</html>\n")
