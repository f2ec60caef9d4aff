"""The hot-path functions used to take typed parameters; they now take one JSON parameter
(metering/pg_functions.py, installed after every migrate). Drop the old overloads once."""

from django.db import migrations

DROP_TYPED_OVERLOADS = r"""
DO $drop$
DECLARE fn regprocedure;
BEGIN
    FOR fn IN SELECT oid::regprocedure FROM pg_proc
              WHERE proname IN ('gateway_admit', 'gateway_settle') AND pronamespace = current_schema()::regnamespace
                AND pg_get_function_identity_arguments(oid) <> 'p jsonb'
    LOOP
        EXECUTE 'DROP FUNCTION ' || fn;
    END LOOP;
END
$drop$;
"""


def drop_typed_overloads(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_TYPED_OVERLOADS)


class Migration(migrations.Migration):
    dependencies = [("metering", "0006_meter_lookups_by_period")]

    operations = [migrations.RunPython(drop_typed_overloads, migrations.RunPython.noop)]
