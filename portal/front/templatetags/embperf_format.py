"""Template filters for the figures on result pages: `num`, `ms`, `percent`, `duration`, `mib`, `seconds_until`.

Numbers are written by benchmarks/numbers.py, the one rule for figures shown to people; missing values
(None) render as an en dash, so an empty cell is never mistaken for zero.
"""
from django import template

from benchmarks.numbers import MISSING, figure, milliseconds, size
from benchmarks.numbers import percent as as_percent

register = template.Library()


@register.filter
def num(value, digits: int = 3):
    """A compact number with about `digits` significant digits and thousands separators: 1,234 · 56.7 · 0.123."""
    return figure(value, digits=int(digits))


@register.filter
def ms(value):
    """A latency in milliseconds: '12.3 ms', '1,234 ms'."""
    return milliseconds(value)


@register.filter
def percent(value, decimals: int = 1):
    """A fraction 0..1 as a percentage; tiny non-zero rates are not rounded down to 0 %."""
    return as_percent(value, int(decimals))


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


@register.filter
def bytes_size(value):
    """A size in bytes: '812 B', '43.7 KiB', '1.2 MiB'."""
    return size(value)

