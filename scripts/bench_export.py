"""`make bench` section "export": streamed CSV export of a run with 1,000,000 raw samples.

Fills a fresh SQLite database (a temporary file, migrated from scratch) with one run whose plan
kept raw samples: 1,000,000 requests over 4 levels, handed to the raw-sample writer in batches of
10,000 as the worker does (portal.sweeps.samples). That happens in a child process, so the exporting
process starts clean. A second child process then downloads GET /api/v1/runs/<id>/samples/ through
Django's test client with an API token (no network), reading the stream chunk by chunk, and prints:
  - rows and bytes exported, time taken, rows/s
  - resident memory (RSS) before the request and the peak during it     goal: peak < 200 MB, flat

    python scripts/bench_export.py [--samples 1000000]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from benchdb import setup_django  # noqa: E402

GOAL_PEAK_MB = 200.0
LEVELS = [1, 8, 32, 64]
BATCH = 10_000


def rss_mb() -> float:
    """Current resident set size of this process (Linux /proc), MB."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux


def fill(n_samples: int) -> None:
    """Child 1: a user, team, target, plan and a run with n_samples raw samples."""
    import random

    from django.contrib.auth.models import User

    from portal.accounts.models import Membership, Team
    from portal.sweeps.models import Plan, RawSampleChunk, Target
    from portal.sweeps.samples import writer_for_run
    from portal.sweeps.services import create_run

    user = User.objects.create_user("bench")
    team = Team.objects.create(name="bench")
    Membership.objects.create(team=team, user=user, role="owner")
    target = Target.objects.create(team=team, name="sim", base_urls=["http://127.0.0.1:9/v1"], model_name="m")
    plan = Plan.objects.create(team=team, name="keep", levels=LEVELS, keep_samples=True, duration_s=60)
    run = create_run(target=target, plan=plan, user=user)
    sink = writer_for_run(run)
    rng = random.Random(7)
    started = time.perf_counter()
    per_level = n_samples // len(LEVELS)
    for index in range(len(LEVELS)):
        count = per_level if index < len(LEVELS) - 1 else n_samples - per_level * (len(LEVELS) - 1)
        t = 0.0
        done = 0
        while done < count:
            size = min(BATCH, count - done)
            batch = []
            for _ in range(size):
                t += rng.expovariate(1000.0)
                service = rng.lognormvariate(-4.0, 0.3)
                ok = rng.random() > 0.001
                batch.append((t, t + 0.0002, t + 0.0002 + service, "ok" if ok else "http_5xx",
                               200 if ok else 503, 512, 1, 4200 if ok else 90))
            sink(index, batch)
            done += size
    took = time.perf_counter() - started
    stored = sum(len(c) for c in RawSampleChunk.objects.filter(run=run).values_list("data", flat=True))
    print(f"filled run {run.pk}: {n_samples:,} raw samples over {len(LEVELS)} levels in {took:.1f} s "
          f"({n_samples / took:,.0f} samples/s written); stored compressed: {stored / 1e6:.1f} MB "
          f"({stored / n_samples:.1f} bytes/sample)")


def export(n_samples: int) -> int:
    """Child 2: stream the CSV through the API and report time and memory."""
    from django.contrib.auth.models import User
    from django.test import Client

    from portal.accounts.models import ApiToken
    from portal.sweeps.models import Run

    user = User.objects.get(username="bench")
    _, token = ApiToken.issue(user, "bench")
    run = Run.objects.get()
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    before = rss_mb()
    started = time.perf_counter()
    response = client.get(f"/api/v1/runs/{run.pk}/samples/")
    if response.status_code != 200 or not response.streaming:
        print(f"export failed: HTTP {response.status_code} (streaming={response.streaming})")
        return 1
    total_bytes = lines = 0
    samples_rss = []
    for i, part in enumerate(response.streaming_content):
        total_bytes += len(part)
        lines += part.count(b"\n")
        if i % 10 == 0:
            samples_rss.append(rss_mb())
    response.close()
    took = time.perf_counter() - started
    rows = lines - 1
    peak = peak_rss_mb()
    print(f"exported {rows:,} rows, {total_bytes / 1e6:.1f} MB of CSV in {took:.2f} s "
          f"({rows / took:,.0f} rows/s, {total_bytes / 1e6 / took:.0f} MB/s)")
    print(f"exporting process RSS: {before:.0f} MB before the request, {max(samples_rss):.0f} MB at most while "
          f"streaming (first {samples_rss[0]:.0f} MB, last {samples_rss[-1]:.0f} MB); peak RSS {peak:.0f} MB")
    verdict = "met" if peak < GOAL_PEAK_MB else "MISSED"
    print(f"goal: peak RSS < {GOAL_PEAK_MB:.0f} MB with memory flat over the stream -> {verdict}")
    if rows != n_samples:
        print(f"export incomplete: expected {n_samples:,} rows")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000, help="raw samples in the run (default 1,000,000)")
    parser.add_argument("--phase", choices=["fill", "export"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args.phase:
        setup_django(Path(args.dir), migrate=args.phase == "fill")
        if args.phase == "fill":
            fill(args.samples)
            return 0
        return export(args.samples)
    with tempfile.TemporaryDirectory(prefix="embperf-bench-export-") as tmp:
        for phase in ("fill", "export"):
            status = subprocess.call([sys.executable, __file__, "--phase", phase, "--dir", tmp,
                                      "--samples", str(args.samples)], cwd=ROOT)
            if status != 0:
                print(f"the {phase} step failed (exit {status})")
                return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
