"""One document, two renderings: Markdown (figures as files) and self-contained HTML.

A report is a list of blocks (:class:`Heading`, :class:`Paragraph`, :class:`Bullets`,
:class:`Table`, :class:`Figure`). :func:`to_markdown` links figures by their path relative to
the report; :func:`to_html` embeds them as ``data:image/png;base64`` URIs and inlines its CSS,
so the HTML file can be mailed or opened anywhere without the figures directory.
"""

from __future__ import annotations

import base64
import dataclasses
import html
from collections.abc import Sequence
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Heading:
    """A section heading (``level`` 1 is the title)."""

    text: str
    level: int = 2


@dataclasses.dataclass(frozen=True)
class Paragraph:
    """A paragraph of plain text."""

    text: str


@dataclasses.dataclass(frozen=True)
class Bullets:
    """A bulleted list of plain-text items."""

    items: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Table:
    """A table of already formatted cells.

    Attributes:
        columns: Header cells.
        rows: Body rows, each as long as ``columns``.
        caption: Optional line shown above the table.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclasses.dataclass(frozen=True)
class Figure:
    """A PNG figure.

    Attributes:
        path: The PNG file.
        caption: What the figure shows (also its alt text).
    """

    path: Path
    caption: str


Block = Heading | Paragraph | Bullets | Table | Figure

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 74rem;
       margin: 2rem auto; padding: 0 1.5rem; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .55rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f3; }
tbody tr:nth-child(even) { background: #fafafc; }
.caption { font-weight: 600; margin-bottom: .2rem; }
figure { margin: 1rem 0 1.6rem; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9rem; color: #555; }
"""


def _md_text(text: str) -> str:
    # "<lang>" would be read as an HTML tag and vanish in a rendered Markdown view.
    return text.replace("<", "\\<")


def _md_cell(text: str) -> str:
    # A pipe would end the cell; a newline would end the row.
    return _md_text(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block], base_dir: Path) -> str:
    """Render blocks as GitHub-flavoured Markdown.

    Args:
        blocks: The document.
        base_dir: Directory of the Markdown file; figure links are relative to it.

    Returns:
        The Markdown text.
    """
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {_md_text(block.text)}")
        elif isinstance(block, Paragraph):
            out.append(_md_text(block.text))
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {_md_text(item)}" for item in block.items))
        elif isinstance(block, Table):
            lines = [f"**{_md_text(block.caption)}**", ""] if block.caption else []
            lines.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
            lines.append("|" + "|".join("---" for _ in block.columns) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            out.append("\n".join(lines))
        else:
            rel = block.path.relative_to(base_dir).as_posix()
            caption = _md_text(block.caption)
            out.append(f"![{caption}]({rel})\n\n*{caption}*")
    return "\n\n".join(out) + "\n"


def png_data_uri(path: Path) -> str:
    """``data:image/png;base64,...`` for a PNG file.

    Raises:
        ValueError: The file is not a PNG (checked by its signature).
    """
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"{path} is not a PNG file; only PNG figures can be embedded")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def to_html(blocks: Sequence[Block], title: str) -> str:
    """Render blocks as one self-contained HTML page (inline CSS, images as data URIs).

    Args:
        blocks: The document.
        title: The page title.

    Returns:
        The HTML text; it references no other file or URL.
    """
    esc = html.escape
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Bullets):
            items = "".join(f"<li>{esc(item)}</li>" for item in block.items)
            body.append(f"<ul>{items}</ul>")
        elif isinstance(block, Table):
            caption = f'<div class="caption">{esc(block.caption)}</div>' if block.caption else ""
            head = "".join(f"<th>{esc(c)}</th>" for c in block.columns)
            rows = "".join(
                "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                for row in block.rows
            )
            body.append(f"{caption}<table><thead><tr>{head}</tr></thead>"
                        f"<tbody>{rows}</tbody></table>")
        else:
            body.append(
                f'<figure><img src="{png_data_uri(block.path)}" alt="{esc(block.caption)}">'
                f"<figcaption>{esc(block.caption)}</figcaption></figure>"
            )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
