"""Who configured each run channel (``tb_channel.set_by_scope``): a ``gate.created`` delivery
carries the gate's resolve token only to channels set by a scope that may resolve gates
(operator, admin; the env key and the open API count as admin). An agent that sets a channel
gets ``resolveToken: null`` and a ``decideUrl`` instead, so it can never approve its own gate.

Existing rows get ``agent``: who set them is unknown, so they fail closed (their receivers get
the ``decideUrl`` and decide in the dashboard). Adding a column with a constant default rewrites
nothing in Postgres 11+. Gate-inline channels keep the scope in their JSON (``setByScope``);
old inline channels without it count as ``agent`` for the same reason. For the same reason the
resolve token is blanked in ``gate.created`` deliveries already written (a pending retry or a
redelivery would otherwise still send it to a channel now counted as agent-set).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tidebase_core", "0008_lean_step_event_indexes"),
    ]

    operations = [
        migrations.RunSQL(
            """UPDATE tb_channel_delivery
               SET payload = jsonb_set(payload, '{gate,resolveToken}', 'null'::jsonb)
               WHERE event_type = 'gate.created' AND jsonb_typeof(payload->'gate'->'resolveToken') = 'string'""",
            reverse_sql=migrations.RunSQL.noop,
        ),
        migrations.AddField(
            model_name="channel",
            name="set_by_scope",
            field=models.CharField(
                db_default="agent",
                help_text="Scope of the principal that configured the channel. Gate deliveries carry the "
                "resolve token only to channels set by a scope that may resolve (operator, admin).",
                max_length=16,
            ),
        ),
    ]
