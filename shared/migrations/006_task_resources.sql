-- What a running execution's pool process uses, written with each heartbeat: resident
-- memory in bytes and CPU percent since the previous beat (100 = one core). NULL until the
-- first beat that measured them; a finished row keeps its last reading.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS rss_bytes bigint;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS cpu_percent real;
