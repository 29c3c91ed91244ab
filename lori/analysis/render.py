"""Markdown and HTML rendering of the report: tables, sections, the two pages.

A report is a list of :class:`Section` (each carries its Markdown and its HTML body) and a
list of figures; :func:`markdown_page` and :func:`html_page` lay them out. The HTML page is
self-contained: figures are embedded as base64 PNG (:func:`embed_png`), so it opens from a
mail attachment, with no server and no sibling files.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, NamedTuple, Sequence

Table = tuple[list[str], list[list[str]]]
Figure = tuple[str, str]          # (PNG file name inside the report directory, caption)

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}code{font-size:90%}")
# after load, <body data-figures-shown="k/n">: how many images a browser decoded (checked headless in tests)
SCRIPT = ("<script>addEventListener('load',()=>{const i=[...document.images];document.body.dataset.figuresShown="
          "i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length})</script>")


class Section(NamedTuple):
    title: str
    markdown: str
    html: str


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def embed_png(path: Path) -> str:
    """An ``<img>`` carrying the PNG itself (base64 data URI): the HTML needs no sibling files."""
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"' \
           ' style="max-width:100%">'


def table_section(title: str, table: Table, note: str = "", note_first: bool = False) -> Section:
    """A table with an optional paragraph after it (or before it, ``note_first``)."""
    md, page = md_table(*table), html_table(*table)
    if not note:
        return Section(title, md, page)
    if note_first:
        return Section(title, note + "\n\n" + md, f"<p>{html.escape(note)}</p>" + page)
    return Section(title, md + "\n\n" + note, page + f"<p>{html.escape(note)}</p>")


def facts_section(title: str, facts: Sequence[tuple[str, str]], note: str = "") -> Section:
    """A short ``label: value`` list (e.g. the provenance block), with an optional paragraph after it."""
    md = "\n".join(f"- **{k}**: {v}" for k, v in facts) + (f"\n\n{note}" if note else "")
    page = ("<ul>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in facts) + "</ul>"
            + (f"<p>{html.escape(note)}</p>" if note else ""))
    return Section(title, md, page)


def json_section(title: str, obj: Any) -> Section:
    text = json.dumps(obj, indent=2)
    return Section(title, f"```json\n{text}\n```", f"<pre>{html.escape(text)}</pre>")


def markdown_page(title: str, run: str, sections: Sequence[Section], figures: Sequence[Figure]) -> str:
    md = [f"# {title}", "", f"Run `{run}`." if run else ""]
    for s in sections:
        md += ["", f"## {s.title}", "", s.markdown]
    md += ["", "## Figures", "", "Each figure is also saved as SVG next to the PNG.", ""]
    for fname, caption in figures:
        md += [f"![{caption}]({fname})", "", f"*{caption}*", ""]
    return "\n".join(md) + "\n"


def html_page(title: str, run: str, sections: Sequence[Section], figures: Sequence[Figure], folder: Path) -> str:
    """The self-contained page; ``folder`` holds the figures' PNG files (read and embedded)."""
    e = html.escape
    body = [f"<h1>{e(title)}</h1>", f"<p>Run <code>{e(run)}</code>.</p>" if run else ""]
    for s in sections:
        body += [f"<h2>{e(s.title)}</h2>", s.html]
    body += ["<h2>Figures</h2>", "<p>Each figure is also saved as SVG next to this file.</p>"]
    for fname, caption in figures:
        body.append(f"<figure>{embed_png(folder / fname)}<figcaption>{e(caption)}</figcaption></figure>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{STYLE}</style>"
            f"</head><body>{''.join(body)}{SCRIPT}</body></html>\n")
