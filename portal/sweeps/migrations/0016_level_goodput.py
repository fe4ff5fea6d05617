"""Levels get a goodput column (requests/s whose latency met the plan's SLO), filled from each stored
level document, so compare can put goodput beside req/s for runs recorded before it existed."""
from django.db import migrations, models


def fill_goodput(apps, schema_editor):
    Level = apps.get_model("sweeps", "Level")
    for pk, data in Level.objects.filter(data__has_key="goodput").values_list("pk", "data").iterator():
        per_s = ((data or {}).get("goodput") or {}).get("per_s")
        if per_s is not None:
            Level.objects.filter(pk=pk).update(goodput_per_s=per_s)


class Migration(migrations.Migration):

    dependencies = [
        ('sweeps', '0015_plan_length_distribution'),
    ]

    operations = [
        migrations.AddField(
            model_name='level',
            name='goodput_per_s',
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.RunPython(fill_goodput, migrations.RunPython.noop),
    ]
