from django.db import migrations, models


class Migration(migrations.Migration):
    """Prior-art search fees in the ledger and its daily rollup (cost_micro_usd stays tokens + fees)."""

    dependencies = [("metering", "0015_would_refuse_reasons")]

    operations = [
        migrations.AddField(
            model_name="usagelog", name="search_fees_micro_usd",
            field=models.BigIntegerField(
                default=0, db_default=0,
                help_text="Of cost_micro_usd: the priced outbound requests (prior-art search fees)."),
        ),
        migrations.AddField(
            model_name="usagedaily", name="search_fees_micro_usd",
            field=models.BigIntegerField(default=0, db_default=0),
        ),
    ]
