"""Statistics derived from a level document once, so history and comparison pages never re-read it.

A Level's `data` holds the full level document (histogram, per-second series, telemetry): tens of
kilobytes. The comparison needs only a few numbers per level (the noise of each figure), the run
page a percentile curve, and the "What changed" panel the GPU model. These are computed when the
level is stored (see receivers.py) and kept in LevelStats, a few hundred bytes each.
"""
from django.db import models

from benchmarks import stats
from benchmarks.compare import level_noise
from portal.sweeps.models import Level, Run

# Percentiles of the latency-distribution curve: dense in the tail, where runs differ.
CURVE_PERCENTILES = (0, 10, 25, 50, 75, 90, 95, 97.5, 99, 99.5, 99.7, 99.9, 99.95, 99.99, 99.999, 100)


class LevelStatsQuerySet(models.QuerySet):
    def for_levels(self, levels) -> dict[int, "LevelStats"]:
        """{level id: LevelStats} for the given Level rows, computing any that are missing.

        Missing rows appear for levels written without signals (bulk inserts, old data); they
        are computed from the level documents of just those levels and kept.
        """
        ids = [lv.pk for lv in levels]
        found = {s.level_id: s for s in self.filter(level_id__in=ids)}
        missing = [pk for pk in ids if pk not in found]
        if missing:
            created = [
                LevelStats(level=lv, **LevelStats.fields_from_level(lv))
                for lv in Level.objects.filter(pk__in=missing).only("id", "run_id", "data")
            ]
            LevelStats.objects.bulk_create(created, ignore_conflicts=True)
            found.update({s.level_id: s for s in created})
        return found


class LevelStats(models.Model):
    level = models.OneToOneField(Level, models.CASCADE, primary_key=True, related_name="stats")
    run = models.ForeignKey(Run, models.CASCADE, related_name="+")
    noise = models.JSONField(default=dict, help_text="Standard error of each compared figure (metric key -> value).")
    curve = models.JSONField(default=list, help_text="Latency distribution: [[percentile, ms], ...].")
    gpu_names = models.JSONField(default=list)

    objects = LevelStatsQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "level stats"

    def __str__(self) -> str:
        return f"stats of {self.level_id}"

    @staticmethod
    def fields_from_level(level: Level) -> dict:
        """The derived fields for one level, read from its level document."""
        doc = level.data or {}
        quantile = curve = stddev_ms = None
        hist = stats.decode(doc["histogram"]) if doc.get("histogram") else None
        if hist is not None and hist.get_total_count() > 0:
            stddev_ms = hist.get_stddev() / 1000
            def quantile(pct: float) -> float:
                return stats.percentile_ms(hist, pct)

            curve = [[p, stats.percentile_ms(hist, p)] for p in CURVE_PERCENTILES]
        gpus = (doc.get("gpu") or {}).get("gpus") or []
        return {
            "run_id": level.run_id,
            "noise": level_noise(doc, quantile, stddev_ms),
            "curve": curve or [],
            "gpu_names": [g.get("name") for g in gpus if g.get("name")],
        }
