-- simfota server schema, PostgreSQL flavour. Keep in step with ../sqlite/0014_card_pin_tries.sql.
-- The card's PIN retry counter as a verified export page stated it (docs/formats.md §7, member
-- 7): the tries left (0: blocked), the maximum (NULL when the card did not state it) and when
-- the server stored the page. NULL tries: no stored page carried the counter yet.
ALTER TABLE cards ADD COLUMN pin_tries_left BIGINT;
ALTER TABLE cards ADD COLUMN pin_max_tries BIGINT;
ALTER TABLE cards ADD COLUMN pin_reported_ms BIGINT;
