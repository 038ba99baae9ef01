"""NOTIFY listeners of every committed event (see tidebase_core.realtime)."""

from __future__ import annotations

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION tb_event_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('tidebase_events', NEW.run_id);
  RETURN NULL;
END $$;
CREATE TRIGGER tb_event_notify AFTER INSERT ON tb_event
  FOR EACH ROW EXECUTE FUNCTION tb_event_notify();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS tb_event_notify ON tb_event;
DROP FUNCTION IF EXISTS tb_event_notify();
"""


class Migration(migrations.Migration):
    dependencies = [("tidebase_core", "0001_initial")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
