from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("metering", "0007_drop_typed_hot_path_functions")]

    operations = [
        migrations.AddField(
            model_name="usagelog", name="settled_late",
            field=models.BooleanField(default=False, help_text="Settled after its lease expired and its holds were "
                                      "released: charged all the same."),
        ),
        migrations.AddField(
            model_name="usagelog", name="max_tokens_fitted",
            field=models.PositiveIntegerField(blank=True, null=True, help_text="Budget fitting shrank the call's "
                                              "max_tokens to this to fit the quota left."),
        ),
    ]
