"""Number formatting filters used on result pages."""
import pytest

from portal.front.templatetags.embperf_format import duration, mib, ms, num, percent, seconds_until


@pytest.mark.parametrize(
    "value, text",
    [(None, "–"), (0, "0"), (1234.5, "1,234"), (56.78, "56.8"), (5.678, "5.68"), (0.01234, "0.0123"),
     (999.4, "999"), (-12.5, "-12.5"), ("x", "–"), (4.0, "4"), (64, "64")],
)
def test_num(value, text):
    assert num(value) == text


def test_ms_percent_duration_mib():
    assert ms(12.345) == "12.3 ms" and ms(None) == "–"
    assert percent(0.0234) == "2.3 %" and percent(0) == "0 %" and percent(0.000001) == "<0.1 %"
    assert duration(0.5) == "0.5 s" and duration(45) == "45 s"
    assert duration(125) == "2 min 05 s" and duration(3780) == "1 h 03 min"
    assert mib(512) == "512 MiB" and mib(20480) == "20.0 GiB" and mib(None) == "–"


def test_one_rule_for_figures_on_pages_and_in_exports():
    from benchmarks.numbers import figure

    assert figure(1234.56, decimals=1) == "1,234.6" and figure(98765.4, decimals=0) == "98,765"
    assert figure(None, decimals=1) == num(None) == "–"
    assert num(56.78) == figure(56.78) == "56.8"


def test_seconds_until():
    from datetime import UTC, datetime, timedelta

    start = datetime(2025, 1, 1, tzinfo=UTC)
    assert duration(seconds_until(start, start + timedelta(seconds=75))) == "1 min 15 s"
    assert seconds_until(start, None) is None and duration(None) == "–"
