-- simfota server schema, PostgreSQL flavour. Keep in step with ../sqlite/0004_dm_session_reads.sql.
-- When the server last read a card's lists (servers, policy, originators) through its device:
-- sessions read them again only when they are due (never read, older than the configured
-- refresh period, or an issuer admin command was applied to the card since), instead of in
-- every session.
ALTER TABLE cards ADD COLUMN lists_read_ms BIGINT;
-- Every DM message looks whether its card's admin queue holds a command: by index.
CREATE INDEX admin_queue_card_state ON admin_queue(card_id, state);
