"""`make bench` section "portal": server time of the history, compare and run-list pages at scale.

Fills a fresh SQLite database (a temporary file, migrated from scratch) with 1,000 finished runs of
6 levels each for one target and plan (realistic level documents: encoded HDR histograms, per-second
series, GPU telemetry on every third run), one baseline among them and a few slower runs. Then, with
Django's test client (no network), it measures the median server time of several requests to:
  - the history page of that target and plan (1,000 runs)       goal: < 300 ms
  - a compare of 10 runs                                         goal: < 300 ms
  - the run list                                                 goal: < 300 ms
  - the dashboard (regressions of the 900 runs after the baseline)
and the SQL queries per page, beside the same page with few runs (a second team with 10 runs, a
compare of 2 runs): the counts must not grow with the number of runs shown.

    python scripts/bench_portal.py [--runs 1000] [--repeats 7] [--seconds 60]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from benchdb import setup_django  # noqa: E402

GOAL_MS = 300.0
LEVELS = [1, 4, 8, 16, 32, 64]
TEMPLATES = 12  # distinct simulated runs whose level documents are reused across the 1,000


def fill(n_runs: int, seconds: int):
    """One team with `n_runs` runs of one target and plan; a second team with 10. Returns both users."""
    from django.contrib.auth.models import User
    from django.db import transaction

    from benchmarks.document import summarize
    from portal.accounts.models import Membership, Team
    from portal.history.models import LevelStats
    from portal.sweeps.documents import level_columns
    from portal.sweeps.models import Level, Plan, Run, Target
    from tests.factories import level_docs

    templates = []
    for i in range(TEMPLATES):
        slow = i == TEMPLATES - 1
        docs = level_docs(LEVELS, seed=i, duration_s=seconds, gpu=i % 3 == 0,
                          capacity_qps=260 if slow else 380 + 4 * i, base_ms=24 if slow else 20)
        stats = [LevelStats.fields_from_level(Level(run_id=0, data=d)) for d in docs]
        templates.append((docs, stats, summarize(docs, 250.0)))

    def team_with_runs(name: str, username: str, count: int, baseline_at: int | None):
        team = Team.objects.create(name=name)
        user = User.objects.create_user(username, password="bench-password")
        Membership.objects.create(team=team, user=user, role="owner")
        target = Target.objects.create(team=team, name=f"{name} sglang", base_urls=["http://127.0.0.1:30000/v1"],
                                       model_name="Qwen/Qwen3-Embedding-4B", engine="sglang", engine_version="0.4.9",
                                       launch_config={"--max-running-requests": "128"})
        plan = Plan.objects.create(team=team, name="sweep 1-64", levels=LEVELS, warmup_s=5, duration_s=seconds,
                                   tokens=512, dimensions=1024, slo_p99_ms=250)
        start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        with transaction.atomic():
            runs = Run.objects.bulk_create([
                Run(team=team, target=target, plan=plan, target_config=target.to_spec(with_secret=False),
                    plan_config=plan.to_spec(), server_config={"--chunked-prefill-size": str(4096 * (1 + i % 2))},
                    label=f"nightly {i}", notes=f"build {1000 + i}", status=Run.Status.SUCCEEDED,
                    started=start + dt.timedelta(hours=i), finished=start + dt.timedelta(hours=i, minutes=15),
                    worker_host="gpu-01", client_version="0.1.0", is_baseline=i == baseline_at,
                    summary={**templates[i % TEMPLATES][2], "slo_p99_ms": 250.0},
                    document={"client": {"version": "0.1.0", "host": "gpu-01", "python": "3.11"}})
                for i in range(count)
            ], batch_size=500)
            for i, run in enumerate(runs):  # auto_now_add ignores a given value: spread creation times
                run.created = start + dt.timedelta(hours=i)
            Run.objects.bulk_update(runs, ["created"], batch_size=500)
            levels, level_stats = [], []
            for i, run in enumerate(runs):
                docs, stats, _ = templates[i % TEMPLATES]
                for doc in docs:
                    levels.append(Level(run=run, index=doc["index"], data=doc, **level_columns(doc)))
            Level.objects.bulk_create(levels, batch_size=500)
            for level in levels:
                docs, stats, _ = templates[(level.run_id - runs[0].pk) % TEMPLATES]
                level_stats.append(LevelStats(level=level, **{**stats[level.index], "run_id": level.run_id}))
            LevelStats.objects.bulk_create(level_stats, batch_size=500)
        return user, target, plan, runs

    big = team_with_runs("Inference", "bench-big", n_runs, baseline_at=n_runs // 10)
    small = team_with_runs("Search", "bench-small", 10, baseline_at=2)
    return big, small


def measure(client, url: str, repeats: int) -> tuple[float, int]:
    """(median server time in ms, SQL queries of one request)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url)  # warm caches (templates, URL resolver)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url} answered {response.status_code}")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        client.get(url)
        times.append((time.perf_counter() - started) * 1000)
    with CaptureQueriesContext(connection) as ctx:
        client.get(url)
    return statistics.median(times), len(ctx.captured_queries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=60, help="measured seconds per level in the documents")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="embperf-bench-portal-") as tmp:
        setup_django(Path(tmp))
        from django.test import Client
        from django.urls import reverse

        started = time.perf_counter()
        (big_user, big_target, big_plan, big_runs), (small_user, small_target, small_plan, small_runs) = fill(
            args.runs, args.seconds)
        size_mb = (Path(tmp) / "bench.sqlite3").stat().st_size / 1e6
        print(f"filled {args.runs} + 10 runs x {len(LEVELS)} levels in {time.perf_counter() - started:.0f} s "
              f"(database {size_mb:.0f} MB)")

        big, small = Client(), Client()
        big.force_login(big_user)
        small.force_login(small_user)
        history = reverse("history")
        compare = reverse("compare")
        pages = [
            ("history page", f"{history}?target={big_target.pk}&plan={big_plan.pk}", args.runs,
             f"{history}?target={small_target.pk}&plan={small_plan.pk}", 10, small, True),
            ("compare", f"{compare}?runs={','.join(str(r.pk) for r in big_runs[-10:])}", 10,
             f"{compare}?runs={','.join(str(r.pk) for r in big_runs[-2:])}", 2, big, True),
            ("run list", reverse("run-list"), args.runs, reverse("run-list"), 10, small, True),
            ("dashboard", reverse("dashboard"), args.runs, reverse("dashboard"), 10, small, False),
        ]
        print(f"\n{'page':<14} {'runs':>6} {'median ms':>10} {'queries':>8}   {'runs':>5} {'queries':>8}   goal")
        missed = []
        for name, url, n, small_url, small_n, small_client, has_goal in pages:
            ms, queries = measure(big, url, args.repeats)
            _, small_queries = measure(small_client, small_url, 3)
            goal = f"< {GOAL_MS:.0f} ms" if has_goal else "(no goal)"
            verdict = "" if not has_goal else ("ok" if ms < GOAL_MS else "MISSED")
            if has_goal and ms >= GOAL_MS:
                missed.append(name)
            flag = "" if queries == small_queries else "  queries differ!"
            print(f"{name:<14} {n:>6} {ms:>10.1f} {queries:>8}   {small_n:>5} {small_queries:>8}   "
                  f"{goal} {verdict}{flag}")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\nmedian of {args.repeats} requests each, Django test client, SQLite; load average {load:.1f}")
        if missed:
            print(f"goal missed: {', '.join(missed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
