import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("sandboxes", "0002_default_presets"),
    ]

    operations = [
        migrations.CreateModel(
            name="Reservation",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("namespace", models.CharField(max_length=100)),
                ("key", models.CharField(max_length=100)),
                ("owner", models.CharField(blank=True, max_length=200)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                "ordering": ["namespace", "key"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("namespace", "key"), name="reservation_unique_key"
                    )
                ],
            },
        ),
    ]
