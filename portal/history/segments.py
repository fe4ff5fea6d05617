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

__all__ = ["REPEAT_WINDOW", "Repeat", "RepeatIndex", "capacity_noise", "capacity_value", "config_changes",
           "config_fingerprint", "repeat_noise", "snapshot_fields", "usable_level"]

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


class RepeatIndex:
    """Repeats by configuration, for the between-run noise of any of them with some runs left out."""

    def __init__(self, repeats: Iterable[Repeat]):
        self.repeats = sorted(repeats, key=lambda r: (r.created, r.id))
        self.by_id = {r.id: r for r in self.repeats}
        self.by_key: dict[str, list[Repeat]] = defaultdict(list)
        for r in self.repeats:
            if r.counts:
                self.by_key[r.key].append(r)

    def others(self, run: Repeat, exclude: frozenset[int] = frozenset()) -> list[Repeat]:
        """The latest REPEAT_WINDOW counting runs of `run`'s configuration, `run` and `exclude` left out."""
        return [r for r in self.by_key.get(run.key, []) if r.id != run.id and r.id not in exclude][-REPEAT_WINDOW:]

    def noise(self, run_id: int, exclude: Iterable[int] = ()) -> dict[float, dict[str, float | None]]:
        """{load: {metric: between-run noise or None}} of one run's levels."""
        run = self.by_id[run_id]
        others = self.others(run, frozenset(exclude))
        noise: dict[float, dict[str, float | None]] = {}
        for load in run.levels:
            series = [r.levels[load] for r in others if load in r.levels and usable_level(r.levels[load])]
            noise[load] = {m: between_run_noise([v.get(m) for v in series]) for m in METRICS}
        return noise

    def capacity(self, run_id: int, exclude: Iterable[int] = ()) -> float | None:
        """The between-run spread of the capacity of one run's configuration, or None."""
        return between_run_noise([r.capacity for r in self.others(self.by_id[run_id], frozenset(exclude))])


def repeat_noise(repeats: Iterable[Repeat], wanted: Iterable[int] | None = None
                 ) -> dict[int, dict[float, dict[str, float | None]]]:
    """{run id: {load: {metric: between-run noise or None}}} for each wanted run (default: all).

    The noise of a run's figure is between_run_noise over the same figure of the latest REPEAT_WINDOW
    other counting runs with the run's configuration, in time order."""
    index = RepeatIndex(repeats)
    wanted_ids = None if wanted is None else set(wanted)
    return {r.id: index.noise(r.id) for r in index.repeats if wanted_ids is None or r.id in wanted_ids}


def capacity_noise(repeats: Iterable[Repeat], wanted: Iterable[int] | None = None) -> dict[int, float | None]:
    """{run id: the between-run spread of its set-up's capacity, or None}: between_run_noise over the
    capacities of the other counting runs of its configuration, as repeat_noise does for level figures."""
    index = RepeatIndex(repeats)
    wanted_ids = None if wanted is None else set(wanted)
    return {r.id: index.capacity(r.id) for r in index.repeats if wanted_ids is None or r.id in wanted_ids}
