-- simfota server schema, PostgreSQL flavour. Keep in step with ../sqlite/0006_log_requests_by_card.sql.
-- A card-log export is matched to its card's newest open request: by index, not by a scan
-- of every request ever sent (one per log read).
CREATE INDEX log_requests_card_state ON log_requests(card_id, state);
