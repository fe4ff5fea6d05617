"""Capacity under an SLO: the highest load (arrival rate, or concurrency) whose level meets the plan's SLO.

The search (docs/capacity.md) runs its levels through the sweep's own level machinery
(`Sweep._run_level`), so each probed level is measured, stored and streamed like any other:
1. one synchronous level (closed loop, concurrency 1) learns the unloaded latency and the rate it
   implies (its requests/s);
2. an exponential probe doubles the load from there until a level fails the SLO;
3. bisection between the last pass and the first fail, down to the plan's precision;
4. a load only counts as a pass once it passed `capacity_trials` times, so one noisy level cannot
   move the answer.
A client-bound level (the load generator, not the server, was the limit) is neither a pass nor a
fail: the search stops there and says so. The search is bounded by the plan's time budget, its
highest load and the installation's limit on levels.
"""
import math
import time

from benchmarks import slo as slo_rule
from benchmarks.document import level_load

# Outcomes of one probed level.
PASS, FAIL, CLIENT = "pass", "fail", "client-bound"

# Phases of the search, stored with each level (`capacity_step.phase`).
SYNCHRONOUS, PROBE, PROBE_DOWN, BISECT, CONFIRM = "synchronous", "probe", "probe down", "bisect", "confirm"

# How the search ended (`capacity.status`).
FOUND = "found"  # a capacity between a pass and a fail, within the precision
NONE = "none"  # no load met the SLO
AT_MAX = "max_load"  # the highest load the plan allows passed: the capacity is at least that
CLIENT_BOUND = "client_bound"  # the client was the limit before the server failed
BUDGET = "budget"  # the time budget ran out before the precision was reached
LEVELS = "max_levels"  # the installation's limit on levels per run was reached first
CANCELLED = "cancelled"

# The rate the probe goes down to, as a share of the synchronous level's rate, before it gives up.
LOWEST_SHARE = 1 / 16


def client_bound(level: dict) -> bool:
    """Whether the client, not the server, limited this level (benchmarks.document's client health)."""
    return bool((level.get("client") or {}).get("client_bound"))


def _round_rate(value: float) -> float:
    """A rate with 3 significant digits, as a person would pick it."""
    if value <= 0:
        return value
    digits = 2 - int(math.floor(math.log10(value)))
    return round(value, digits)


class CapacitySearch:
    """One capacity search inside a sweep (`Sweep.run` starts it for a plan with `search: capacity`)."""

    def __init__(self, sweep, pool):
        self.sweep = sweep
        self.pool = pool
        plan = sweep.plan
        self.plan = plan
        self.closed = plan["mode"] == "closed"
        self.slo = slo_rule.Slo.from_plan(plan, default_error_rate=slo_rule.DEFAULT_ERROR_RATE)
        self.precision = plan["capacity_precision"]
        self.trials = plan["capacity_trials"]
        self.budget_s = plan["capacity_budget_s"]
        self.max_load = int(plan["capacity_max_load"]) if self.closed else plan["capacity_max_load"]
        self.max_levels = sweep.limits.max_levels
        self.started = time.monotonic()
        self.passes: dict[float, list[dict]] = {}  # load -> its passing levels (no failing trial)
        self.fails: dict[float, dict] = {}  # load -> its first failing level
        self.status: str | None = None
        self.reason = ""
        self.client_level: dict | None = None
        self.sync_level: dict | None = None

    # ---- one level ---------------------------------------------------------------------------

    def _stop(self, status: str, reason: str) -> None:
        self.status, self.reason = status, reason

    def _can_run(self) -> bool:
        sweep = self.sweep
        if sweep.cancel.cancelled:
            self._stop(CANCELLED, "cancelled")
            return False
        if len(sweep.levels) >= self.max_levels:
            self._stop(LEVELS, f"stopped after {len(sweep.levels)} levels, this installation's limit "
                               "(EMBPERF_MAX_LEVELS)")
            return False
        per_level = self.plan["warmup_s"] + self.plan["duration_s"]
        if time.monotonic() - self.started + per_level > self.budget_s:
            self._stop(BUDGET, f"the time budget of {self.budget_s:g} s would run out during the next level")
            return False
        return True

    def _level(self, load, phase: str, why: str, trial: int = 1) -> str | None:
        """Run one level and judge it: PASS, FAIL or CLIENT; None when the search must stop first."""
        if self.status is not None or not self._can_run():
            return None
        sweep = self.sweep
        index = len(sweep.levels)
        mode = "closed" if phase == SYNCHRONOUS else None
        level = sweep._run_level(self.pool, index, load, mode=mode)
        if level["status"] == "cancelled" and level["duration_s"] <= 0:
            sweep.status, sweep.status_reason = "cancelled", f"cancelled during the warm-up of level {index}"
            self._stop(CANCELLED, "cancelled")
            return None
        breaches = self.slo.breaches(level)
        if level["status"] == "cancelled":
            outcome = None
        elif client_bound(level):
            outcome = CLIENT
        else:
            outcome = FAIL if breaches else PASS
        level["capacity_step"] = {
            "step": index + 1, "phase": phase, "reason": why, "trial": trial,
            "outcome": outcome, "breaches": [b["text"] for b in breaches],
        }
        sweep.levels.append(level)
        if sweep.on_level is not None:
            sweep.on_level(level)
        if level["status"] == "cancelled":
            sweep.status, sweep.status_reason = "cancelled", f"cancelled during level {index}"
            self._stop(CANCELLED, "cancelled")
            return None
        if outcome == CLIENT:
            self.client_level = level
            client = level.get("client") or {}
            shown = f"concurrency {load:g}" if level.get("concurrency") is not None else f"{load:g} req/s"
            why = f" ({client['client_bound_reason']})" if client.get("client_bound_reason") else ""
            self._stop(CLIENT_BOUND, f"the client was the limit at {shown}{why}; "
                                     + (client.get("advice") or "use more load processes or another load host"))
            return None
        if phase == SYNCHRONOUS and not self.closed:
            pass  # a closed-loop level is no pass or fail of any arrival rate
        elif outcome == PASS:
            self.passes.setdefault(load, []).append(level)
        else:
            self.fails.setdefault(load, level)
            self.passes.pop(load, None)
        return outcome

    def _trials(self, load, phase: str, why: str, trials: int) -> str | None:
        """Run `load` until it failed once or passed `trials` times in all."""
        while len(self.passes.get(load, [])) < trials:
            done = len(self.passes.get(load, []))
            outcome = self._level(load, phase, why if not done else f"{why}; trial {done + 1} of {trials}",
                                  trial=done + 1)
            if outcome != PASS:
                return outcome
        return PASS

    # ---- the search --------------------------------------------------------------------------

    def _show(self, load) -> str:
        return f"concurrency {load:g}" if self.closed else f"{load:g} req/s"

    def _next_up(self, load):
        up = load * 2
        if self.closed:
            up = int(up)
        else:
            up = _round_rate(up)
        return min(up, self.max_load)

    def _middle(self, low, high):
        if self.closed:
            return (low + high) // 2
        mid = _round_rate((low + high) / 2)
        return mid if low < mid < high else (low + high) / 2

    def _close_enough(self, low, high) -> bool:
        if self.closed:
            return high - low <= max(1, math.floor(self.precision * low))
        return high - low <= self.precision * low

    def run(self) -> dict:
        """Search, store every level on the sweep, and return the `capacity` section."""
        self._start()
        low, high = None, None
        if self.status is None:
            low, high = self._probe_up(max(self.passes, default=None))
        if self.status is None and low is None and high is not None:
            low, high = self._probe_down(high)
        if self.status is None and low is not None and high is not None:
            low, high = self._bisect(low, high)
        return self._answer()

    def _start(self) -> None:
        """The synchronous level (in closed loop also the search's first load, concurrency 1)."""
        outcome = self._level(1, SYNCHRONOUS, "the unloaded latency: one request at a time")
        if outcome is None:
            return
        self.sync_level = self.sweep.levels[-1]
        if outcome == FAIL:
            # One request at a time already breaks the SLO: no higher load can meet it.
            self._stop(NONE, "one request at a time already breaks the SLO: "
                             + "; ".join(self.sync_level["capacity_step"]["breaches"]))

    def _probe_up(self, low):
        if self.closed:
            load = self._next_up(1)
            if load <= 1:
                outcome = self._trials(1, CONFIRM, "concurrency 1 is the highest load the plan allows: confirm it",
                                       self.trials)
                if outcome == PASS:
                    self._stop(AT_MAX, "the highest load the plan allows (concurrency 1) met the SLO")
                elif outcome == FAIL:
                    self._stop(NONE, "concurrency 1 failed on a repeat")
                return low, None
        else:
            implied = self.sync_level["qps"]
            if not implied:
                self._stop(NONE, "the synchronous level had no successful request")
                return None, None
            load = min(_round_rate(implied), self.max_load)
        why = (f"the rate one request at a time reached ({self._show(load)})" if not self.closed
               else "twice the synchronous concurrency")
        while True:
            outcome = self._level(load, PROBE, why)
            if outcome is None:
                return low, None
            if outcome == FAIL:
                return low, load
            if load >= self.max_load:
                # The top of the range is a boundary too: it counts once it passed its trials.
                outcome = self._trials(load, CONFIRM, f"{self._show(load)} is the highest load the plan allows: "
                                                      "confirm it", self.trials)
                if outcome == FAIL:
                    return low, load
                if outcome == PASS:
                    self._stop(AT_MAX, f"the highest load the plan allows ({self._show(self.max_load)}) "
                                       "met the SLO")
                return load if outcome == PASS else low, None
            low = load
            up = self._next_up(load)
            why = f"{self._show(load)} passed: twice that"
            load = up

    def _probe_down(self, high):
        """Open loop: the implied rate already failed; halve it until a rate passes."""
        lowest = (self.sync_level["qps"] or 0) * LOWEST_SHARE
        load = _round_rate(high / 2)
        while load >= lowest and load > 0:
            outcome = self._level(load, PROBE_DOWN, f"{self._show(high)} failed: half of it")
            if outcome is None:
                return None, high
            if outcome == PASS:
                return load, high
            high, load = load, _round_rate(load / 2)
        self._stop(NONE, f"no rate down to {self._show(high)} met the SLO")
        return None, high

    def _bisect(self, low, high):
        while self.status is None:
            if self._close_enough(low, high):
                if len(self.passes.get(low, [])) >= self.trials:
                    self._stop(FOUND, f"between {self._show(low)} (passed) and {self._show(high)} (failed), "
                                      f"within the precision of {self.precision:.0%}")
                    break
                outcome = self._trials(low, CONFIRM, f"{self._show(low)} is the highest pass: confirm it",
                                       self.trials)
            else:
                mid = self._middle(low, high)
                outcome = self._trials(mid, BISECT, f"between {self._show(low)} and {self._show(high)}",
                                       self.trials)
                if outcome == PASS:
                    low = mid
                elif outcome == FAIL:
                    high = mid
                continue
            if outcome == FAIL:
                # The confirmation failed: the boundary lies lower, between the passes below it.
                high = low
                below = [load for load in self.passes if load < high]
                if not below:
                    self._stop(NONE, f"{self._show(high)} failed on a repeat and nothing below it passed")
                    return None, high
                low = max(below)
        return low, high

    # ---- the answer --------------------------------------------------------------------------

    def _answer(self) -> dict:
        confirmed = [load for load, levels in self.passes.items() if len(levels) >= self.trials]
        # A search cut short (budget, client, highest load) may hold passes not yet repeated:
        # the highest of them is then the answer, marked unconfirmed.
        best = max(confirmed or self.passes, default=None)
        failed_above = [load for load in self.fails if best is None or load > best]
        lowest_fail = min(failed_above, default=None)
        best_level = self.passes[best][-1] if best is not None else None
        fail_level = self.fails.get(lowest_fail) if lowest_fail is not None else None
        status = self.status or (FOUND if best is not None else NONE)
        if status == FOUND and best is None:
            status = NONE
        binding = None
        if status == CLIENT_BOUND:
            binding = "client"
        elif fail_level is not None:
            binding = self._binding(fail_level)
        cliff, cliff_reason = self._cliff(best_level, fail_level)
        uncertainty = None
        if best is not None and lowest_fail is not None:
            uncertainty = {"absolute": round(lowest_fail - best, 6), "share": round((lowest_fail - best) / best, 6)}
        return {
            "status": status,
            "reason": self.reason or ("no load met the SLO" if best is None else ""),
            "mode": self.plan["mode"],
            "unit": "concurrency" if self.closed else "rate",
            "slo": self.slo.to_dict(),
            "load": best,
            "confirmed": best is not None and len(self.passes[best]) >= self.trials,
            "level_index": best_level["index"] if best_level else None,
            "figures": self._figures(best_level) if best_level else None,
            "lowest_fail": lowest_fail,
            "lowest_fail_index": fail_level["index"] if fail_level else None,
            "lowest_fail_breaches": fail_level["capacity_step"]["breaches"] if fail_level else [],
            "uncertainty": uncertainty,
            "binding": binding,
            "client_bound_load": level_load(self.client_level) if self.client_level else None,
            "cliff": cliff,
            "cliff_reason": cliff_reason,
            "precision": self.precision,
            "trials": self.trials,
            "unloaded_latency_ms": (self.sync_level["latency_ms"] if self.sync_level else {}).get("p50"),
            "levels_run": len(self.sweep.levels),
            "elapsed_s": round(time.monotonic() - self.started, 1),
        }

    def _binding(self, level: dict) -> str | None:
        """The limit that failed the lowest failing load: the error rate first when it broke (errors
        make latency figures of the rest meaningless), else the latency or goodput limit."""
        constraints = [b["constraint"] for b in self.slo.breaches(level)]
        if "error_rate" in constraints:
            return "error_rate"
        return constraints[0] if constraints else None

    def _cliff(self, best: dict | None, failed: dict | None) -> tuple[bool, str | None]:
        """A cliff: past the capacity, throughput fell or errors jumped past the limit, rather than
        latency creeping up while the server kept its pace."""
        if best is None or failed is None:
            return False, None
        reasons = []
        if failed["qps"] < best["qps"] * (1 - max(self.precision, 0.05)):
            reasons.append(f"throughput fell from {best['qps']:g} to {failed['qps']:g} req/s")
        if self.slo.error_rate is not None and failed["error_rate"] > self.slo.error_rate >= best["error_rate"]:
            reasons.append(f"the error rate jumped from {best['error_rate']:.2%} to {failed['error_rate']:.2%}")
        return bool(reasons), "; ".join(reasons) or None

    @staticmethod
    def _figures(level: dict) -> dict:
        out = {
            "qps": level["qps"], "texts_per_s": level["texts_per_s"], "tokens_per_s": level["tokens_per_s"],
            "latency_ms": level["latency_ms"], "error_rate": level["error_rate"],
            "goodput_per_s": (level.get("goodput") or {}).get("per_s"),
            "client_bound": client_bound(level),
        }
        gpu = level.get("gpu")
        if gpu:
            out["gpu"] = gpu
        return out


def summary_text(cap: dict) -> str:
    """The answer of a capacity search in one sentence, e.g. "60 req/s at p99 ≤ 500 ms, error rate
    ≤ 1.00% (lowest failing 65 req/s; binding: p99)" (the exports' line; the CLI prints more)."""
    limits = slo_rule.limit_lines(cap.get("slo") or {})
    unit = "req/s" if cap.get("unit") == "rate" else "in flight"
    if cap.get("load") is None:
        head = ("not measured: the client was the limit first" if cap.get("status") == CLIENT_BOUND
                else "no load met the SLO")
        text = f"{head} ({', '.join(limits)})"
    else:
        text = f"{cap['load']:g} {unit} at {', '.join(limits)}"
        if not cap.get("confirmed", True):
            text += ", passed once"
    extra = []
    if cap.get("lowest_fail") is not None:
        extra.append(f"lowest failing {cap['lowest_fail']:g} {unit}")
    if cap.get("binding"):
        extra.append(f"binding: {cap['binding'].replace('_', ' ')}")
    if cap.get("cliff"):
        extra.append("cliff: " + (cap.get("cliff_reason") or "throughput fell or errors jumped"))
    return text + (f" ({'; '.join(extra)})" if extra else "")
