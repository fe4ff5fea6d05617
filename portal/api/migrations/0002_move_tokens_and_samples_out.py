"""API tokens moved to accounts and raw samples to sweeps, tables and data untouched: the API app
stops owning them in Django's state only (see accounts 0002_api_token, sweeps 0005_raw_sample_chunk)."""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('api', '0001_initial'),
        ('accounts', '0002_api_token'),
        ('sweeps', '0005_raw_sample_chunk'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name='ApiToken'),
                migrations.DeleteModel(name='RawSampleChunk'),
            ],
            database_operations=[],
        ),
    ]
