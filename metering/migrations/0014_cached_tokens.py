from django.db import migrations, models


class Migration(migrations.Migration):
    """Prompt-cache token counts in the ledger and its daily rollup (tokens_in stays all prompt tokens)."""

    dependencies = [("metering", "0012_api_key_meters")]

    operations = [
        migrations.AddField(
            model_name="usagelog", name="tokens_cached_in",
            field=models.BigIntegerField(default=0, db_default=0, help_text="Of tokens_in: read from the prompt cache."),
        ),
        migrations.AddField(
            model_name="usagelog", name="tokens_cache_write",
            field=models.BigIntegerField(default=0, db_default=0,
                                         help_text="Of tokens_in: written to the prompt cache."),
        ),
        migrations.AddField(
            model_name="usagedaily", name="tokens_cached_in", field=models.BigIntegerField(default=0, db_default=0),
        ),
        migrations.AddField(
            model_name="usagedaily", name="tokens_cache_write", field=models.BigIntegerField(default=0, db_default=0),
        ),
    ]
