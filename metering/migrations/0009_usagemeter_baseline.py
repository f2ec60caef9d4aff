from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("metering", "0008_usagelog_settled_late_fitted")]

    operations = [
        migrations.AddField(
            model_name="usagemeter", name="baseline",
            field=models.BigIntegerField(default=0, db_default=0, help_text="What the ledger already held for this "
                                         "subject and period when the meter was created."),
        ),
    ]
