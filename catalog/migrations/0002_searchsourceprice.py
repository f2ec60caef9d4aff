from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="SearchSourcePrice",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("source", models.CharField(choices=[("uspto_odp", "USPTO Open Data Portal"),
                                                     ("epo_ops", "EPO Open Patent Services"),
                                                     ("openalex", "OpenAlex")], max_length=32)),
                ("request_kind", models.CharField(
                    help_text="e.g. search, list, singleton (OpenAlex tiers), token (OPS OAuth).", max_length=32)),
                ("micro_usd", models.BigIntegerField(default=0, help_text="Price of one request, integer micro-USD.")),
                ("note", models.CharField(blank=True, help_text="Where the price comes from.", max_length=200)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "ordering": ["source", "request_kind"],
                "constraints": [
                    models.UniqueConstraint(fields=("source", "request_kind"), name="uniq_search_source_price"),
                    models.CheckConstraint(condition=models.Q(("micro_usd__gte", 0)),
                                           name="search_source_price_non_negative"),
                ],
            },
        ),
    ]
