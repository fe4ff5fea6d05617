"""A capacity search's document in the portal: ingested whole, judged on its capacity, exported with
its answer, its goodput and each level's step in CSV and Markdown."""
import csv
import io

import pytest

from benchmarks import capacity
from benchmarks.numbers import figure
from benchmarks.simulator import running_simulator
from benchmarks.sweep import run_sweep
from portal.sweeps.models import Run
from tests.api_support import token_client

pytestmark = pytest.mark.usefixtures("fresh_throttles")

# Batches of at most 10 requests of 32 tokens, 200 ms each.
SERVER = {"batch_ms": 200, "batch_wait_ms": 1, "token_us": 0, "max_batch_tokens": 336, "native_dimensions": 16}


def search(sim, **overrides):
    plan = {"name": "capacity", "search": "capacity", "mode": "open", "arrival": "constant", "warmup_s": 0.3,
            "duration_s": 1.0, "tokens": 32, "dimensions": 16, "input": "repeat", "timeout_s": 5,
            "abort_error_rate": 1.0, "seed": 4, "slo_p99_ms": 800, **overrides}
    return run_sweep({"name": "sim", "flavor": "openai", "base_urls": [sim.base_url], "model": "sim-embed"}, plan)


@pytest.fixture(scope="module")
def documents():
    """One search that finds its answer at the highest load allowed, one that finds none."""
    keep = capacity.client_bound
    capacity.client_bound = lambda level: False  # the shared test host must not end the search
    try:
        with running_simulator(**SERVER) as sim:
            found = search(sim, capacity_max_load=20)
            none = search(sim, slo_p99_ms=50)
    finally:
        capacity.client_bound = keep
    return found, none


@pytest.mark.django_db
def test_an_ingested_search_keeps_its_answer_and_is_judged_on_its_capacity(client, owner, team, documents):
    found, none = documents
    api = token_client(owner)
    assert found["capacity"]["status"] == "max_load" and found["capacity"]["load"] == 20
    response = api.post("/api/v1/ingest/", found)
    assert response.status_code == 201, response.json()
    run_id = response.json()["id"]
    run = Run.objects.get(pk=run_id)
    # Every probed level is stored; the verdict judges only the capacity's level.
    assert run.levels.count() == len(found["levels"])
    assert run.judge() == "passed", run.verdict_reasons
    body = api.get(f"/api/v1/runs/{run_id}/").json()
    assert body["capacity"] == found["capacity"] and body["verdict"] == "passed"
    exported = api.get(f"/api/v1/runs/{run_id}/export/").json()
    assert exported["capacity"] == found["capacity"]
    assert [lv["capacity_step"] for lv in exported["levels"]] == [lv["capacity_step"] for lv in found["levels"]]

    rows = list(csv.DictReader(io.StringIO(api.get(f"/api/v1/runs/{run_id}/export/?format=csv").content.decode())))
    assert [row["capacity_step"] for row in rows] == [str(i + 1) for i in range(len(rows))]
    assert rows[0]["capacity_phase"] == "synchronous" and {row["capacity_outcome"] for row in rows} == {"pass"}
    assert {row["run_capacity"] for row in rows} == {"20.0"}
    for row, level in zip(rows, found["levels"], strict=True):
        assert float(row["goodput_per_s"]) == level["goodput"]["per_s"] and row["goodput_limit_ms"] == "800.0"
    markdown = api.get(f"/api/v1/runs/{run_id}/export/?format=md").content.decode()
    assert "**Capacity**: 20 req/s at p99 ≤ 800 ms, error rate ≤ 1.00%" in markdown
    # Goodput beside req/s on every level, against the SLO's latency limit.
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert table[0].split("|")[2:4] == [" req/s ", " goodput/s (≤ 800 ms) "], table[0]
    for line, level in zip(table[2:], found["levels"], strict=True):
        assert line.split("|")[3].strip() == figure(level["goodput"]["per_s"])

    # The run page: the answer above the table, goodput, and each level's step with why it was chosen.
    client.force_login(owner)
    page = client.get(f"/runs/{run_id}/").content.decode()
    assert "Capacity:</strong> 20 req/s at p99 ≤ 800 ms" in page and ">Goodput</th>" in page
    assert "step 1 · synchronous · pass" in page and "in flight</span>" in page
    assert "the unloaded latency: one request at a time" in page
    assert "Capacity search: the probes against the SLO" in page and "SLO: p99 \\u2264 800 ms" in page

    none_id = api.post("/api/v1/ingest/", none).json()["id"]
    failed = Run.objects.get(pk=none_id)
    assert failed.judge() == "failed"
    assert any(reason.startswith("no capacity: one request at a time") for reason in failed.verdict_reasons)
    markdown = api.get(f"/api/v1/runs/{none_id}/export/?format=md").content.decode()
    assert "**Capacity**: no load met the SLO (p99 ≤ 50 ms" in markdown
