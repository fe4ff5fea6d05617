"""Template filters for the figures on result pages: `num`, `ms`, `percent`, `duration`, `mib`, `seconds_until`.

Missing values (None) render as an en dash, so an empty cell is never mistaken for zero.
"""
from django import template

register = template.Library()

MISSING = "–"


def _group(value: float, decimals: int) -> str:
    return f"{value:,.{decimals}f}"


@register.filter
def num(value, digits: int = 3):
    """A compact number with about `digits` significant digits and thousands separators: 1,234 · 56.7 · 0.123."""
    if value is None or value == "":
        return MISSING
    try:
        value = float(value)
    except (TypeError, ValueError):
        return MISSING
    magnitude = abs(value)
    if magnitude >= 10 ** (int(digits) - 1) or value.is_integer():
        return _group(value, 0)
    if magnitude >= 1:
        decimals = int(digits) - len(str(int(magnitude)))
        return _group(value, max(decimals, 0))
    return f"{value:.{int(digits)}g}"


@register.filter
def ms(value):
    """A latency in milliseconds: '12.3 ms', '1,234 ms'."""
    text = num(value)
    return text if text == MISSING else f"{text} ms"


@register.filter
def percent(value, decimals: int = 1):
    """A fraction 0..1 as a percentage; tiny non-zero rates are not rounded down to 0 %."""
    if value is None:
        return MISSING
    value = float(value) * 100
    if value == 0:
        return "0 %"
    if value < 10 ** -int(decimals):
        return f"<{10 ** -int(decimals):g} %"
    return f"{value:.{int(decimals)}f} %"


@register.filter
def duration(seconds):
    """Seconds as '0.5 s', '45 s', '2 min 05 s' or '1 h 03 min'."""
    if seconds is None or seconds == "":
        return MISSING
    if float(seconds) < 10 and not float(seconds).is_integer():
        return f"{float(seconds):.1f} s"
    total = int(round(float(seconds)))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@register.filter
def seconds_until(start, end):
    """Seconds from one datetime to another (None when either is missing), for `duration`."""
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


@register.filter
def mib(value):
    """Memory in MiB, shown in GiB from 1 GiB up."""
    if value is None:
        return MISSING
    value = float(value)
    if value >= 1024:
        return f"{value / 1024:,.1f} GiB"
    return f"{value:,.0f} MiB"


@register.filter
def get_item(mapping, key):
    """mapping[key] in a template, or None."""
    if not isinstance(mapping, dict):
        return None
    return mapping.get(key)
