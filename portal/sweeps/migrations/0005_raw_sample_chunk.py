"""Raw samples belong to sweeps now. The table and its index keep their names (`api_rawsamplechunk`), so
this only moves the model in Django's state; the content type follows."""
import django.db.models.deletion
from django.db import migrations, models


def move_content_type(apps, schema_editor, old=("api", "rawsamplechunk"), new=("sweeps", "rawsamplechunk")):
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label=new[0], model=new[1]).exists():
        ContentType.objects.filter(app_label=old[0], model=old[1]).update(app_label=new[0])


def move_content_type_back(apps, schema_editor):
    move_content_type(apps, schema_editor, old=("sweeps", "rawsamplechunk"), new=("api", "rawsamplechunk"))


class Migration(migrations.Migration):

    dependencies = [
        ('sweeps', '0004_queue_grants'),
        ('api', '0001_initial'),
        ('contenttypes', '0002_remove_content_type_name'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='RawSampleChunk',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('level_index', models.PositiveIntegerField()),
                        ('count', models.PositiveIntegerField()),
                        ('data', models.BinaryField()),
                        ('run', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='sample_chunks', to='sweeps.run')),
                    ],
                    options={
                        'db_table': 'api_rawsamplechunk',
                        'indexes': [models.Index(fields=['run', 'level_index', 'id'], name='api_rawsamp_run_id_1181e2_idx')],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(move_content_type, move_content_type_back),
    ]
