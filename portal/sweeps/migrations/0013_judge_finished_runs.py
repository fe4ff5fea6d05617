"""Every run that had ended before verdicts existed is judged once, from its stored levels and plan,
so the verdict column holds a verdict for every finished run (the pages judge a run they find without
one too, but a query on the column must not miss the older ones)."""
from django.db import migrations

from benchmarks.verdict import judge

FINAL = ("succeeded", "failed", "cancelled", "interrupted")


def judge_finished(apps, schema_editor):
    Run = apps.get_model("sweeps", "Run")
    Level = apps.get_model("sweeps", "Level")
    for run in Run.objects.filter(status__in=FINAL, verdict="").only("pk", "status", "plan_config", "document"):
        levels = [data for data in Level.objects.filter(run_id=run.pk).order_by("index").values_list("data", flat=True)]
        aborted_at = ((run.document or {}).get("run") or {}).get("aborted_at_level")
        result = judge(run.plan_config or {}, levels, status=run.status, aborted_at_level=aborted_at)
        verdict = result.pop("verdict")
        Run.objects.filter(pk=run.pk).update(verdict=verdict, verdict_detail=result)


def forget(apps, schema_editor):
    apps.get_model("sweeps", "Run").objects.update(verdict="", verdict_detail={})


class Migration(migrations.Migration):

    dependencies = [
        ("sweeps", "0012_plan_thresholds_run_verdict"),
    ]

    operations = [migrations.RunPython(judge_finished, forget)]
