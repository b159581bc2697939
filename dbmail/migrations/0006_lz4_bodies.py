"""Bodies compressed with lz4 rather than pglz on PostgreSQL.

A rendered newsletter is about as large as PostgreSQL's in-row limit, so
most bodies get compressed on insert; pglz is several times slower than lz4
(PostgreSQL 14+), and expansion inserts 10,000 rows a second.
"""

from django.db import DatabaseError, migrations, transaction

COLUMNS = ("text", "html", "raw_message")


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for column in COLUMNS:
        try:
            with transaction.atomic(using=schema_editor.connection.alias):
                schema_editor.execute(f"ALTER TABLE dbmail_textofemail ALTER COLUMN {column} SET COMPRESSION lz4")
        except DatabaseError:
            return  # a server built without lz4 keeps its default; only speed differs


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for column in COLUMNS:
        schema_editor.execute(f"ALTER TABLE dbmail_textofemail ALTER COLUMN {column} SET COMPRESSION DEFAULT")


class Migration(migrations.Migration):
    dependencies = [("dbmail", "0005_fewer_indexes")]
    operations = [migrations.RunPython(forwards, backwards)]
