-- simfota server schema, PostgreSQL flavour. Keep in step with ../sqlite/0007_dm_sessions_ended.sql.
-- An ended DM session keeps its row for a few minutes (`dm::store::ENDED_KEPT_MS`): a copy of
-- the message that ended it (a device whose last reply was lost, or a racing copy) is answered
-- with the reply already given instead of being taken for a stray message. NULL while open.
ALTER TABLE dm_sessions ADD COLUMN ended_ms BIGINT;
