"""API tokens belong to accounts now. The table keeps its name (`api_apitoken`), so this only moves the
model in Django's state; the content type follows, so admin permissions and history stay attached."""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def move_content_type(apps, schema_editor, old=("api", "apitoken"), new=("accounts", "apitoken")):
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label=new[0], model=new[1]).exists():
        ContentType.objects.filter(app_label=old[0], model=old[1]).update(app_label=new[0])


def move_content_type_back(apps, schema_editor):
    move_content_type(apps, schema_editor, old=("accounts", "apitoken"), new=("api", "apitoken"))


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0001_initial'),
        ('api', '0001_initial'),
        ('contenttypes', '0002_remove_content_type_name'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='ApiToken',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(max_length=100)),
                        ('prefix', models.CharField(max_length=20)),
                        ('digest', models.CharField(max_length=64, unique=True)),
                        ('created', models.DateTimeField(auto_now_add=True)),
                        ('expires', models.DateTimeField(blank=True, null=True)),
                        ('last_used', models.DateTimeField(blank=True, null=True)),
                        ('revoked', models.DateTimeField(blank=True, null=True)),
                        ('teams', models.ManyToManyField(blank=True, help_text='Limit the token to these teams; none means all of yours.', related_name='+', to='accounts.team')),
                        ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='api_tokens', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'db_table': 'api_apitoken',
                        'ordering': ['-created', '-id'],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(move_content_type, move_content_type_back),
    ]
