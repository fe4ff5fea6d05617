"""Segments of a history and the between-run noise they give: one rule for compare, history and dashboard.

A segment is a stretch of runs of one target and plan whose target, plan and server-config
snapshots are identical: repeats of one set-up. What varies between such runs (server restarts,
GPU clocks, neighbours) is noise; a configuration change is not, so it starts a new segment.

A run's between-run noise comes from the *other* succeeded runs with its configuration (the latest
REPEAT_WINDOW of them); the run itself is left out, so a run that got much slower never widens the
noise that judges it. Levels whose error rate is above ERRORED_LEVEL_RATE are no repeats of a
working server's figures and are left out too. Fewer than 3 repeats give no estimate.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from benchmarks.compare import METRICS, between_run_noise
from portal.sweeps.snapshots import config_changes, config_fingerprint, snapshot_fields

__all__ = ["REPEAT_WINDOW", "Repeat", "capacity_noise", "capacity_value", "config_changes", "config_fingerprint",
           "repeat_noise", "snapshot_fields", "usable_level"]

# Repeats (latest first) of one configuration that feed its between-run noise.
REPEAT_WINDOW = 20
# A level with more errors than this measured a failing server (the plans' default error threshold).
ERRORED_LEVEL_RATE = 0.01

@dataclass
class Repeat:
    """One run as a possible repeat: its configuration, whether it counts, and its level figures."""

    id: int
    created: object
    key: str  # config_fingerprint (with the target and plan ids when runs of several pairs are mixed)
    counts: bool  # succeeded: an ended-early or failed run repeats nothing
    levels: dict[float, dict[str, float | None]] = field(default_factory=dict)  # load -> metric -> value
    capacity: float | None = None  # a capacity search's answer (its highest passing load)


def capacity_value(answer: dict | None) -> float | None:
    """A capacity search's answer as a repeat's figure: its load when the search found one, confirmed
    (a client-bound or cut-short answer is a lower bound, no repeat of the server's capacity)."""
    if not answer or answer.get("status") not in ("found", "max_load") or not answer.get("confirmed", True):
        return None
    return answer.get("load")


def usable_level(values: dict[str, float | None]) -> bool:
    """Whether a level's figures measured a working server (its error rate within ERRORED_LEVEL_RATE)."""
    rate = values.get("error_rate")
    return rate is None or rate <= ERRORED_LEVEL_RATE


def _by_key(repeats: list[Repeat]) -> dict[str, list[Repeat]]:
    by_key: dict[str, list[Repeat]] = defaultdict(list)
    for r in repeats:
        if r.counts:
            by_key[r.key].append(r)
    return by_key


def _others(by_key: dict[str, list[Repeat]], run: Repeat) -> list[Repeat]:
    """The latest REPEAT_WINDOW counting runs of `run`'s configuration, `run` left out."""
    return [r for r in by_key.get(run.key, []) if r.id != run.id][-REPEAT_WINDOW:]


def repeat_noise(repeats: Iterable[Repeat], wanted: Iterable[int] | None = None
                 ) -> dict[int, dict[float, dict[str, float | None]]]:
    """{run id: {load: {metric: between-run noise or None}}} for each wanted run (default: all).

    The noise of a run's figure is between_run_noise over the same figure of the latest REPEAT_WINDOW
    other counting runs with the run's configuration, in time order."""
    repeats = sorted(repeats, key=lambda r: (r.created, r.id))
    by_key = _by_key(repeats)
    wanted_ids = None if wanted is None else set(wanted)
    out: dict[int, dict[float, dict[str, float | None]]] = {}
    for run in repeats:
        if wanted_ids is not None and run.id not in wanted_ids:
            continue
        others = _others(by_key, run)
        noise: dict[float, dict[str, float | None]] = {}
        for load in run.levels:
            series = [r.levels[load] for r in others if load in r.levels and usable_level(r.levels[load])]
            noise[load] = {m: between_run_noise([v.get(m) for v in series]) for m in METRICS}
        out[run.id] = noise
    return out


def capacity_noise(repeats: Iterable[Repeat], wanted: Iterable[int] | None = None) -> dict[int, float | None]:
    """{run id: the between-run spread of its set-up's capacity, or None}: between_run_noise over the
    capacities of the other counting runs of its configuration, as repeat_noise does for level figures."""
    repeats = sorted(repeats, key=lambda r: (r.created, r.id))
    by_key = _by_key(repeats)
    wanted_ids = None if wanted is None else set(wanted)
    return {run.id: between_run_noise([r.capacity for r in _others(by_key, run)])
            for run in repeats if wanted_ids is None or run.id in wanted_ids}
