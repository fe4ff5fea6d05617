"""Template tags of the history app: the run page's extra charts (templates/history/_run_charts.html)."""
from django import template

from portal.history.charts import run_charts as build_run_charts

register = template.Library()


@register.simple_tag
def run_charts(run) -> list[dict]:
    """Chart specifications for one run's page (empty while the run has no finished level)."""
    return build_run_charts(run)
