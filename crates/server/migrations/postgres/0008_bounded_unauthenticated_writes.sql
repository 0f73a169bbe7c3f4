-- simfota server schema, PostgreSQL flavour. Keep in step with ../sqlite/0008_bounded_unauthenticated_writes.sql.
-- What an unauthenticated client can make the server write is bounded.
--
-- Security events a client can cause before (or without) authenticating are aggregated: one
-- row per kind, source and hour, counting the attempts (`dm::record_aggregated`). Rows of
-- one event each keep `source` NULL.
ALTER TABLE security_events ADD COLUMN source TEXT;
ALTER TABLE security_events ADD COLUMN bucket_ms BIGINT;
ALTER TABLE security_events ADD COLUMN count BIGINT NOT NULL DEFAULT 1;
ALTER TABLE security_events ADD COLUMN last_ms BIGINT;
CREATE UNIQUE INDEX security_events_aggregated ON security_events(kind, source, bucket_ms)
    WHERE source IS NOT NULL;
-- A device keeps at most one session that has not authenticated (each new SessionID of a
-- failing client replaces it), dropped ten minutes after its last message.
ALTER TABLE dm_sessions ADD COLUMN authenticated BIGINT NOT NULL DEFAULT 1;
