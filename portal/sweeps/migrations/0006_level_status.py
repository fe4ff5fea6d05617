"""Levels carry their status (completed, aborted, cancelled) in a column, filled from the stored level
documents, so pages and history need not read the documents to tell an aborted level apart."""
from django.db import migrations, models

STATUSES = ("completed", "aborted", "cancelled")


def fill_status(apps, schema_editor):
    Level = apps.get_model("sweeps", "Level")
    for status in STATUSES[1:]:
        Level.objects.filter(data__status=status).update(status=status)


class Migration(migrations.Migration):

    dependencies = [
        ('sweeps', '0005_raw_sample_chunk'),
    ]

    operations = [
        migrations.AddField(
            model_name='level',
            name='status',
            field=models.CharField(choices=[('completed', 'Completed'), ('aborted', 'Aborted'), ('cancelled', 'Cancelled')], default='completed', max_length=10),
        ),
        migrations.RunPython(fill_status, migrations.RunPython.noop),
    ]
