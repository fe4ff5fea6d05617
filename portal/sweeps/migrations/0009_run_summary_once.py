"""The summary is kept in Run.summary only: runs that also carried it in Run.document lose that copy."""
from django.db import migrations


def summary_in_its_column(apps, schema_editor):
    Run = apps.get_model("sweeps", "Run")
    for run in Run.objects.filter(document__has_key="summary").only("pk", "summary", "document").iterator():
        document = dict(run.document)
        copy = document.pop("summary") or {}
        Run.objects.filter(pk=run.pk).update(document=document, summary=run.summary or copy)


def summary_in_both(apps, schema_editor):
    Run = apps.get_model("sweeps", "Run")
    for run in Run.objects.exclude(summary={}).only("pk", "summary", "document").iterator():
        Run.objects.filter(pk=run.pk).update(document={**(run.document or {}), "summary": run.summary})


class Migration(migrations.Migration):

    dependencies = [
        ("sweeps", "0008_run_heartbeat_worker_presence"),
    ]

    operations = [
        migrations.RunPython(summary_in_its_column, summary_in_both),
    ]
