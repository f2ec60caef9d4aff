# API keys (issue 13 §1): the key a call was made with, on its reservation and its ledger row; meters
# of an API key's own budget (the key is part of a meter's subject).

import django.db.models.deletion
import django.db.models.functions.comparison
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("metering", "0009_usagemeter_baseline"),
        ("tenants", "0005_apikey_limits"),
    ]

    operations = [
        migrations.AddField(
            model_name="usagemeter",
            name="api_key",
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.CASCADE,
                                    related_name="+", to="tenants.apikey"),
        ),
        migrations.RemoveConstraint(model_name="usagemeter", name="uniq_usage_meter_subject_period"),
        migrations.AddConstraint(
            model_name="usagemeter",
            constraint=models.UniqueConstraint(
                models.F("tenant"), django.db.models.functions.comparison.Coalesce("user", 0),
                django.db.models.functions.comparison.Coalesce("task", 0),
                django.db.models.functions.comparison.Coalesce("api_key", 0), models.F("metric"), models.F("window"),
                models.F("period_start"), name="uniq_usage_meter_subject"),
        ),
        migrations.AddField(
            model_name="usagereservation",
            name="api_key",
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True,
                                    on_delete=django.db.models.deletion.DO_NOTHING, related_name="+",
                                    to="tenants.apikey"),
        ),
        migrations.AddField(
            model_name="usagelog",
            name="api_key",
            field=models.ForeignKey(blank=True, db_index=False, help_text="The API key the call was made with (empty: a JWT).",
                                    null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="usage_logs",
                                    to="tenants.apikey"),
        ),
        migrations.AddIndex(
            model_name="usagelog",
            index=models.Index(condition=models.Q(("api_key__isnull", False)), fields=["api_key", "admitted_at"],
                               name="usagelog_key_time"),
        ),
    ]
