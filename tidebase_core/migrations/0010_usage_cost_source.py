"""Where a usage record's cost came from (``tb_usage.cost_source``): ``caller`` when the agent sent
``costUsd``, ``genai-prices <version>`` when the server computed it from the tokens, provider and
model, NULL when there is no cost.

Nullable without a default, so adding it rewrites nothing (a catalog change only, whatever the
size of tb_usage). Existing rows stay NULL rather than being backfilled: their source is not
recorded, and an UPDATE over millions of ledger rows is not worth a guess.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tidebase_core", "0009_channel_set_by_scope"),
    ]

    operations = [
        migrations.AddField(
            model_name="usagerecord",
            name="cost_source",
            field=models.TextField(blank=True, null=True),
        ),
    ]
