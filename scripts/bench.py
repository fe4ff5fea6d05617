"""`make bench`: run the benchmark sections, one process each, and print what they print.

A section is a script ``scripts/bench_<name>.py`` that prints its own figures and goals and exits 0
when it could measure (a missed goal is a figure, not a failure) or non-zero when it could not run.
Without arguments every section runs, in name order; ``python scripts/bench.py engine`` runs only
``bench_engine.py``. ``--list`` names the sections. Extra arguments after ``--`` go to every section.

The exit status is 1 when any section failed to run.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent


def sections() -> dict[str, Path]:
    """Section name -> script, in name order."""
    return {path.stem.removeprefix("bench_"): path for path in sorted(SCRIPTS.glob("bench_*.py"))}


def main(argv: list[str] | None = None) -> int:
    """Run the named sections (all by default); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        passthrough = argv[argv.index("--") + 1:]
        argv = argv[: argv.index("--")]
    available = sections()
    parser = argparse.ArgumentParser(prog="scripts/bench.py", description="Run embperf's benchmark sections.")
    parser.add_argument("names", nargs="*", help=f"sections to run (default all: {', '.join(available) or 'none'})")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(available))
        return 0
    unknown = [name for name in args.names if name not in available]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(available)}")
    chosen = args.names or list(available)
    if not chosen:
        print("no benchmark sections found (scripts/bench_*.py)")
        return 1

    failed = []
    for name in chosen:
        print(f"\n=== bench section: {name} ===", flush=True)
        started = time.monotonic()
        status = subprocess.call([sys.executable, str(available[name]), *passthrough], cwd=ROOT)
        took = time.monotonic() - started
        print(f"=== {name}: {'ok' if status == 0 else f'FAILED (exit {status})'} in {took:.0f} s ===", flush=True)
        if status != 0:
            failed.append(name)
    if failed:
        print(f"\nsections that could not run: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
