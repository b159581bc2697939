"""Expansion's per-row costs in PostgreSQL (docs/scaling.md#where-expansion-spends).

The email's user and request keep Django's SET_NULL and CASCADE but lose the database's
foreign keys, which PostgreSQL checked row by row. AddressToken loses the varchar_pattern_ops index Django
adds to every character primary key: tokens are only ever looked up whole.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def _like_index(schema_editor, model):
    field = model._meta.get_field("token")
    return schema_editor._create_index_name(model._meta.db_table, [field.column], suffix="_like")


def drop_token_like_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    model = apps.get_model("dbmail", "AddressToken")
    schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(_like_index(schema_editor, model))}")


def create_token_like_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    model = apps.get_model("dbmail", "AddressToken")
    schema_editor.execute(schema_editor._create_like_index_sql(model, model._meta.get_field("token")))


class Migration(migrations.Migration):
    dependencies = [
        ("dbmail", "0018_deliv"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name="textofemail",
            name="request",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="emails",
                to="dbmail.messagerequest",
            ),
        ),
        migrations.AlterField(
            model_name="textofemail",
            name="user",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.RunPython(drop_token_like_index, create_token_like_index),
    ]
