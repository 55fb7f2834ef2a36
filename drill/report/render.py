"""Lay a Document out: one self-contained HTML file, or Markdown with its PNGs beside it.

The HTML carries its style inline and every plot as a base64 PNG: it opens from disk with no
network, and nothing in it is fetched (no script, no external stylesheet, font or image).
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from drill.report.model import Document, Figure, Section, Table

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #212121; line-height: 1.45; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 2px solid #e0e0e0; padding-bottom: .2rem;
     margin-top: 2.4rem; }
.meta, .source { color: #555; font-size: .92rem; }
.missing { background: #fff8e1; border-left: 4px solid #ffa000; padding: .4rem .8rem;
           font-size: .92rem; margin: .5rem 0; }
.kpi { display: inline-block; vertical-align: top; border: 1px solid #e0e0e0; border-radius: 6px;
       padding: .6rem .9rem; margin: .3rem .6rem .3rem 0; max-width: 36rem; }
.kpi .name { font-size: .8rem; text-transform: uppercase; color: #666; }
.kpi .value { font-size: 1.25rem; font-weight: 600; }
.kpi .how { font-size: .8rem; color: #666; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .88rem; }
caption { text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { border: 1px solid #e0e0e0; padding: .25rem .55rem; text-align: left;
         vertical-align: top; }
th { background: #fafafa; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .88rem; color: #444; }
nav a { margin-right: 1rem; }
"""


def _cell(text: str) -> str:
    return escape(text).replace("`", "")


def _code(text: str) -> str:
    """Markdown-ish `code` spans as <code>, everything escaped."""
    parts = escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{_cell(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{_code(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    name = f" data-table='{escape(table.name)}'" if table.name else ""
    return (
        f"<table{name}><caption>{_code(table.caption)}</caption><thead><tr>{head}</tr>"
        f"</thead><tbody>{body}</tbody></table>"
    )


def _html_figure(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return (
        f"<figure data-figure='{escape(figure.name)}'><img src=\"data:image/png;base64,{data}\" "
        f'alt="{escape(figure.caption)}" data-points="{figure.points}">'
        f"<figcaption>{_code(figure.caption)}</figcaption></figure>"
    )


def _html_section(section: Section) -> str:
    parts = [f"<section id='{escape(section.id)}'><h2>{escape(section.title)}</h2>"]
    for source in section.sources:
        parts.append(f"<p class='source'>Source: {_code(source)}</p>")
    for missing in section.missing:
        parts.append(f"<p class='missing'>Not reached: {_code(missing)}</p>")
    for name, value, how in section.kpis:
        parts.append(
            f"<div class='kpi'><div class='name'>{escape(name)}</div>"
            f"<div class='value'>{_code(value)}</div><div class='how'>{_code(how)}</div></div>"
        )
    for paragraph in section.paragraphs:
        parts.append(f"<p>{_code(paragraph)}</p>")
    parts.extend(_html_figure(f) for f in section.figures)
    parts.extend(_html_table(t) for t in section.tables)
    parts.append("</section>")
    return "\n".join(parts)


def to_html(document: Document) -> str:
    window = document.window
    nav = " ".join(f"<a href='#{s.id}'>{escape(s.title)}</a>" for s in document.sections)
    sections = "\n".join(_html_section(s) for s in document.sections)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(document.title)}</title>
<style>{STYLE}</style></head><body>
<h1>{escape(document.title)}</h1>
<p class="meta">From {window.start:%Y-%m-%d %H:%M:%S} to {window.end:%Y-%m-%d %H:%M:%S} UTC;
written {document.generated:%Y-%m-%d %H:%M:%S} UTC by <code>drill report</code>.</p>
<nav>{nav}</nav>
{sections}
</body></html>
"""


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = [
        f"**{table.caption}**",
        "",
        "| " + " | ".join(map(_md_cell, table.headers)) + " |",
        "|" + "---|" * len(table.headers),
    ]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
    return "\n".join(lines)


def figure_path(out: Path, figure: Figure) -> Path:
    """Where the Markdown report's PNG for a figure goes: beside it, named after both."""
    return out.with_name(f"{out.stem}-{figure.name}.png")


def to_markdown(document: Document, out: Path) -> tuple[str, dict[Path, bytes]]:
    """The Markdown text and the PNG files it links to (relative to out's directory)."""
    window = document.window
    lines = [
        f"# {document.title}",
        "",
        f"From {window.start:%Y-%m-%d %H:%M:%S} to {window.end:%Y-%m-%d %H:%M:%S} UTC; "
        f"written {document.generated:%Y-%m-%d %H:%M:%S} UTC by `drill report`.",
    ]
    files: dict[Path, bytes] = {}
    for section in document.sections:
        lines += ["", f"## {section.title}", ""]
        lines += [f"*Source:* {source}  " for source in section.sources]
        lines += [f"> **Not reached:** {missing}\n>" for missing in section.missing]
        if section.kpis:
            lines.append("")
            lines += [f"- **{name}: {value}** ({how})" for name, value, how in section.kpis]
        for paragraph in section.paragraphs:
            lines += ["", paragraph]
        for figure in section.figures:
            path = figure_path(out, figure)
            files[path] = figure.png
            lines += ["", f"![{figure.caption}]({path.name})", "", f"*{figure.caption}*"]
        for table in section.tables:
            lines += ["", _md_table(table)]
    return "\n".join(lines) + "\n", files
