"""The report as typed content, rendered twice: report.md and report.html come from the same
objects, so the two can never disagree.

A section function (analysis/report.py, why.py, causal.py) returns a `Section` of blocks; a block
is a `Paragraph`, `Bullets`, `Table` or `Figure`; text is a sequence of inline pieces (plain
`str`, `Strong`, `Emph`, `Code`, `Link`). Text from the data (class names, folder names) is only
ever a piece, never markup, so each renderer escapes it its own way.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class _Marked:
    text: str


class Strong(_Marked):
    """Bold text."""


class Emph(_Marked):
    """Italic text."""


class Code(_Marked):
    """Code or a path, shown verbatim."""


@dataclass(frozen=True)
class Link:
    text: str
    href: str


Piece = str | Strong | Emph | Code | Link
Text = tuple  # of Piece


def text(*pieces) -> Text:
    """A run of inline pieces; non-text values become their str()."""
    return tuple(p if isinstance(p, (_Marked, Link)) else str(p) for p in pieces)


@dataclass
class Paragraph:
    text: Text


@dataclass
class Bullets:
    items: list  # of Text


@dataclass
class Table:
    """Cells are shown as given (format numbers before); `numeric` columns sort as numbers."""
    frame: pd.DataFrame
    caption: Text = ()
    numeric: tuple = ()


@dataclass
class Figure:
    file: str        # a PNG beside the report
    caption: str


Block = Paragraph | Bullets | Table | Figure


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)
    key: str = ""    # anchor; from the title when empty

    @property
    def anchor(self) -> str:
        return self.key or re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")

    def __bool__(self) -> bool:
        return bool(self.blocks)


@dataclass
class Report:
    title: str
    intro: list            # blocks before the answer
    answer: list           # the "answer first" blocks
    sections: list         # of Section, in order; empty ones are left out
    files: Section
    methods: Section       # last


def fmt_p(p) -> str:
    """A p-value for prose: 2 significant digits, scientific below 1e-4, n/a when missing."""
    if p is None or (isinstance(p, float) and not np.isfinite(p)):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


# ---------------------------------------------------------------- markdown

def md(value) -> str:
    """Escape text from the data (class names, folder names) so it renders as plain text."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~$])", r"\\\1", str(value))


def md_inline(value) -> str:
    """Escape text inside a paragraph: every character that can open inline markup (emphasis,
    code, links, HTML, table cells, strike-through, math) gets a backslash. With the brackets
    escaped no link can form, so parentheses, `!` and `+-` stay readable; with `<` escaped no tag
    can, so `>` is escaped only where it could end one (after a letter, a quote or `/`): `->`,
    `>=` and `a > b` stay as written."""
    return re.sub(r"([\\`*_\[\]<|~$]|(?<=[\w\"'/])>)", r"\\\1", str(value))


def _block_start(line: str) -> str:
    """A paragraph or list item must not begin like a heading, a list or a rule."""
    line = re.sub(r"^([#+=>-])", r"\\\1", line)
    return re.sub(r"^(\d+)([.)])", r"\1\\\2", line)


# how each inline piece is marked up: (markdown, HTML), around its escaped text
MARKUP = {Strong: ("**{}**", "<strong>{}</strong>"), Emph: ("_{}_", "<em>{}</em>"), Code: ("`{}`", "<code>{}</code>")}


def _md_piece(p: Piece) -> str:
    if isinstance(p, Link):
        return f"[{md_inline(p.text)}]({p.href})"
    if isinstance(p, Code):  # nothing is escaped inside a code span; a backtick would end it
        return MARKUP[Code][0].format(p.text.replace("`", ""))
    if type(p) in MARKUP:
        return MARKUP[type(p)][0].format(md_inline(p.text))
    return md_inline(p)


def md_text(t: Text) -> str:
    return _block_start("".join(_md_piece(p) for p in t))


def md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_"
    head = "| " + " | ".join(md(c) for c in df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(md(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _md_block(b: Block) -> list[str]:
    if isinstance(b, Paragraph):
        return [md_text(b.text), ""]
    if isinstance(b, Bullets):
        return [f"- {md_text(i)}" for i in b.items] + [""]
    if isinstance(b, Table):
        return ([md_text(b.caption), ""] if b.caption else []) + [md_table(b.frame), ""]
    if isinstance(b, Figure):
        return [f"![{md(b.caption)}]({b.file})", ""]
    raise TypeError(f"not a report block: {b!r}")


def _md_section(s: Section) -> list[str]:
    return [f"## {s.title}", ""] + [line for b in s.blocks for line in _md_block(b)]


def to_markdown(r: Report) -> str:
    lines = [f"# {md(r.title)}", ""] + [line for b in r.intro for line in _md_block(b)]
    if r.answer:
        lines += ["## The answer first", ""] + [line for b in r.answer for line in _md_block(b)]
    for s in [*[s for s in r.sections if s], r.files, r.methods]:
        lines += _md_section(s)
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------- HTML

def _html_piece(p: Piece) -> str:
    if isinstance(p, Link):
        return f'<a href="{html.escape(p.href)}">{html.escape(p.text)}</a>'
    if type(p) in MARKUP:
        return MARKUP[type(p)][1].format(html.escape(p.text))
    return html.escape(p)


def html_text(t: Text) -> str:
    return "".join(_html_piece(x) for x in t)


def _html_table(b: Table) -> str:
    if b.frame.empty:
        return "<p><em>(none)</em></p>"
    head = "".join(f'<th data-type="{"num" if c in b.numeric else "text"}" tabindex="0">{html.escape(str(c))}</th>'
                   for c in b.frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in b.frame.itertuples(index=False))
    caption = f"<caption>{html_text(b.caption)}</caption>" if b.caption else ""
    return (f'<div class="scroll"><table class="sortable">{caption}<thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div>")


def _html_block(b: Block, folder: Path) -> str:
    if isinstance(b, Paragraph):
        return f"<p>{html_text(b.text)}</p>"
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{html_text(i)}</li>" for i in b.items) + "</ul>"
    if isinstance(b, Table):
        return _html_table(b)
    if isinstance(b, Figure):
        data = base64.b64encode((folder / b.file).read_bytes()).decode()
        return (f'<figure id="fig-{html.escape(Path(b.file).stem)}"><img alt="{html.escape(b.caption)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{html.escape(b.caption)} '
                f'<span class="file">({html.escape(b.file)})</span></figcaption></figure>')
    raise TypeError(f"not a report block: {b!r}")


def _html_section(s: Section, folder: Path) -> str:
    return (f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>'
            + "\n".join(_html_block(b, folder) for b in s.blocks) + "</section>")


STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1b1b1b;margin:0;background:#fafafa}
main{max-width:1400px;margin:0 auto;padding:1.5rem 2rem 4rem;background:#fff}
h1{font-size:1.6rem;margin:.2rem 0 1rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
nav.toc{background:#f3f5f8;border:1px solid #dde3ea;padding:.6rem 1rem;margin:1rem 0}
nav.toc ol{margin:.3rem 0;padding-left:1.4rem}
.answer{background:#eef7ee;border-left:5px solid #3a8a3a;padding:.4rem 1rem;margin:1rem 0}
.scroll{overflow-x:auto;margin:.6rem 0}
table{border-collapse:collapse;font-size:.85rem}
th,td{border:1px solid #d7d7d7;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f0f0;cursor:pointer;white-space:nowrap;position:sticky;top:0}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
tbody tr:nth-child(even){background:#fafafa}
caption{text-align:left;padding:.3rem 0;font-weight:600}
figure{margin:1.2rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85rem;color:#444}.file{color:#888}
code{background:#f2f2f2;padding:0 .2rem}
"""

# Click a column header to sort by it (again to reverse); numbers sort as numbers, "n/a" last.
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    function sort() {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var num = th.dataset.type === "num", body = table.tBodies[0];
      var key = function (tr) {
        var t = tr.cells[col].textContent.trim();
        if (!num) return t.toLowerCase();
        var v = parseFloat(t.split("/")[0]);
        return isNaN(v) ? Infinity : v;
      };
      Array.from(body.rows).sort(function (a, b) {
        var x = key(a), y = key(b);
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      }).forEach(function (tr) { body.appendChild(tr); });
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") sort(); });
  });
});
"""


def to_html(r: Report, folder: Path) -> str:
    """One self-contained page: figures read from `folder` and embedded as data URIs, style and
    the table-sorting script inline; it needs no server and no network."""
    sections = [s for s in r.sections if s] + [r.files, r.methods]
    toc = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in sections)
    answer = ('<section id="answer" class="answer"><h2>The answer first</h2>'
              + "\n".join(_html_block(b, folder) for b in r.answer) + "</section>") if r.answer else ""
    toc = ('<nav class="toc"><strong>Contents</strong><ol>'
           + ('<li><a href="#answer">The answer first</a></li>' if r.answer else "") + toc + "</ol></nav>")
    body = "\n".join(_html_section(s, folder) for s in sections)
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(r.title)}</title><style>{STYLE}</style></head><body><main>"
            f"<h1>{html.escape(r.title)}</h1>" + "\n".join(_html_block(b, folder) for b in r.intro)
            + answer + toc + body + f"</main><script>{SCRIPT}</script></body></html>\n")


# ---------------------------------------------------------------- authored prose

def inline(prose: str) -> Text:
    """Authored text with `**bold**` and `` `code` `` marks as pieces (never text from the data)."""
    pieces = []
    for part in re.split(r"(\*\*[^*]+\*\*|`[^`]+`)", prose):
        if part.startswith("**") and part.endswith("**") and len(part) > 4:
            pieces.append(Strong(part[2:-2]))
        elif part.startswith("`") and part.endswith("`") and len(part) > 2:
            pieces.append(Code(part[1:-1]))
        elif part:
            pieces.append(part)
    return tuple(pieces)


def authored(markdown: str) -> list:
    """Authored markdown (paragraphs, `- ` bullets with indented continuation lines, **bold**,
    `code`) as blocks, for long hand-written text such as the methods; never for the data's text."""
    blocks, paragraph, items = [], [], []

    def flush():
        if paragraph:
            blocks.append(Paragraph(inline(" ".join(paragraph))))
            paragraph.clear()
        if items:
            blocks.append(Bullets([inline(" ".join(item)) for item in items]))
            items.clear()

    for raw in markdown.strip().splitlines():
        line = raw.strip()
        if not line:
            flush()
        elif raw.startswith("- "):
            if paragraph:
                flush()
            items.append([line[2:]])
        elif items and raw.startswith("  "):
            items[-1].append(line)
        else:
            if items:
                flush()
            paragraph.append(line)
    flush()
    return blocks
