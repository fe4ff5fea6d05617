"""Tables as text for reports: Markdown (every cell escaped) and CSV (text cells spreadsheet-safe).

Names, labels and notes come from users and ingested documents. A Markdown table pasted into a
wiki must not carry their HTML or break its columns, and a CSV cell opened in a spreadsheet must
not run as a formula: a text cell starting with = + - @, a tab or a carriage return gets a leading
apostrophe (the spreadsheet convention for "this is text"). Numbers are never changed.
"""
import csv
import html
import io
import re
from collections.abc import Iterable, Sequence

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Markdown's own punctuation: escaped so a name shows as typed, never as emphasis, a link or code.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|])")


def csv_cell(value) -> str:
    """One CSV cell: '' for None, true/false, repr() for floats (exact), text made formula-safe."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_text(rows: Iterable[Sequence]) -> str:
    """Rows (header first) as CSV text with CRLF line ends, every cell through csv_cell."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for row in rows:
        writer.writerow([csv_cell(value) for value in row])
    return out.getvalue()


def md_escape(value) -> str:
    """Text for a Markdown table cell: HTML escaped, Markdown punctuation escaped, one line."""
    text = html.escape(str(value), quote=False)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return " ".join(text.split())


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: Sequence[str]) -> list[str]:
    """The lines of a Markdown table; `align` holds 'left' or 'right' per column. Header and cells are
    escaped here, so callers pass plain text (already formatted numbers, names as stored)."""
    marks = {"left": "---", "right": "---:"}
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |",
             "| " + " | ".join(marks[a] for a in align) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(md_escape(cell) for cell in row) + " |")
    return lines
