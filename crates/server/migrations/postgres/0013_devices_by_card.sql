-- simfota server schema, PostgreSQL flavour. Keep in step with ../sqlite/0013_devices_by_card.sql.
-- The devices holding a card (the dashboard's card page, a card's admin relay) are found by
-- index instead of a scan of every device.
CREATE INDEX devices_iccid ON devices(iccid);
