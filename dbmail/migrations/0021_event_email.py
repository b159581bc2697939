"""The delivery log's email loses its database foreign key (docs/scaling.md#what-keeps-a-sender-fast).

PostgreSQL checked it once per event at the commit, a query and a row lock for every email
sent; Django's CASCADE still deletes an email's events with it.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("dbmail", "0020_events"),
    ]

    operations = [
        migrations.AlterField(
            model_name="deliveryevent",
            name="email",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="events",
                to="dbmail.textofemail",
            ),
        ),
    ]
