from django.db import migrations, models
from django.db.models import Q

# The published prompt-cache rates of the models seed_catalog seeds (integer micro-USD per 1M
# tokens), filled in where an existing row has none: (cached input, cache write).
SEEDED = {
    ("openai", "gpt-4o-mini"): (75_000, 150_000),
    ("openai", "gpt-4o"): (1_250_000, 2_500_000),
    ("gemini", "gemini-2.5-flash"): (30_000, 300_000),
    ("gemini", "gemini-2.5-pro"): (125_000, 1_250_000),
    ("grok", "grok-3-mini"): (75_000, 300_000),
    ("grok", "grok-3"): (750_000, 3_000_000),
    ("anthropic", "claude-haiku-4-5"): (100_000, 1_250_000),
    ("anthropic", "claude-sonnet-4-5"): (300_000, 3_750_000),
    ("anthropic", "claude-opus-4-1"): (1_500_000, 18_750_000),
}


def fill_seeded(apps, schema_editor):
    ProviderModel = apps.get_model("catalog", "ProviderModel")
    for (provider, name), (cached, write) in SEEDED.items():
        ProviderModel.objects.filter(provider=provider, model_name=name, cached_input_price_per_mtok_micro_usd=None,
                                     cache_write_price_per_mtok_micro_usd=None).update(
            cached_input_price_per_mtok_micro_usd=cached, cache_write_price_per_mtok_micro_usd=write)


class Migration(migrations.Migration):
    dependencies = [("catalog", "0002_searchsourceprice")]

    operations = [
        migrations.AddField(
            model_name="providermodel", name="cached_input_price_per_mtok_micro_usd",
            field=models.BigIntegerField(blank=True, null=True,
                                         help_text="Prompt tokens read from the provider's cache (NULL: the input price)."),
        ),
        migrations.AddField(
            model_name="providermodel", name="cache_write_price_per_mtok_micro_usd",
            field=models.BigIntegerField(blank=True, null=True,
                                         help_text="Prompt tokens written to the provider's cache (NULL: the input price)."),
        ),
        migrations.AddConstraint(
            model_name="providermodel",
            constraint=models.CheckConstraint(
                condition=Q(cached_input_price_per_mtok_micro_usd__isnull=True)
                | Q(cached_input_price_per_mtok_micro_usd__gte=0),
                name="provider_model_cached_price_non_negative"),
        ),
        migrations.AddConstraint(
            model_name="providermodel",
            constraint=models.CheckConstraint(
                condition=Q(cache_write_price_per_mtok_micro_usd__isnull=True)
                | Q(cache_write_price_per_mtok_micro_usd__gte=0),
                name="provider_model_cache_write_price_non_negative"),
        ),
        migrations.RunPython(fill_seeded, migrations.RunPython.noop),
    ]
