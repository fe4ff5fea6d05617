"""How a figure is written for a person: one rule for the portal's pages, its exports and the CLI.

A missing value (None) is written as an en dash, so an empty cell is never mistaken for zero.
Machine-readable outputs (JSON, CSV) keep full precision and never go through here.
"""
MISSING = "–"


def figure(value, *, digits: int = 3, decimals: int | None = None) -> str:
    """A number with thousands separators: with `decimals`, that many decimals (1,234.5); otherwise about
    `digits` significant digits, whole numbers as such (1,234 · 56.7 · 0.123 · 64)."""
    if value is None or value == "":
        return MISSING
    try:
        value = float(value)
    except (TypeError, ValueError):
        return MISSING
    if decimals is not None:
        return f"{value:,.{decimals}f}"
    magnitude = abs(value)
    if magnitude >= 10 ** (digits - 1) or value.is_integer():
        return f"{value:,.0f}"
    if magnitude >= 1:
        return f"{value:,.{max(digits - len(str(int(magnitude))), 0)}f}"
    return f"{value:.{digits}g}"


def milliseconds(value) -> str:
    """A latency in milliseconds: '12.3 ms', '1,234 ms'."""
    text = figure(value)
    return text if text == MISSING else f"{text} ms"


def percent(fraction, decimals: int = 1) -> str:
    """A fraction 0..1 as a percentage; a tiny non-zero share is not rounded down to 0 % ('<0.1 %')."""
    if fraction is None:
        return MISSING
    value = float(fraction) * 100
    if value == 0:
        return "0 %"
    if value < 10 ** -decimals:
        return f"<{10 ** -decimals:g} %"
    return f"{value:.{decimals}f} %"


def size(n_bytes) -> str:
    """A size in bytes: '812 B', '43.7 KiB', '1.2 MiB'."""
    if n_bytes is None or n_bytes == "":
        return MISSING
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{figure(value)} {unit}"
        value /= 1024
    return MISSING
