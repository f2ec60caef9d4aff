from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("tenants", "0004_api_keys"),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="limits",
            field=models.JSONField(blank=True, default=dict, help_text='The key\'s own budget, on top of every other limit: {"key_tokens_per_day": 100000, "key_cost_per_month_usd": "25"} (keys of the policy registry with subject KEY).'),
        ),
    ]
