-- simfota server schema, SQLite flavour. Keep in step with ../postgres/0002_card_config_enrolment.sql.
-- The card's originator list as last read (raw CBOR and decoded JSON; the policy has had its
-- columns since 0001), and the decoded log-entry flags: refusal code, free-device
-- authorization, PIN with a consent. And the nonce a device not enrolled yet was challenged
-- with (shared-secret enrolment), until its retry.

ALTER TABLE cards ADD COLUMN originators BLOB;
ALTER TABLE cards ADD COLUMN originators_json TEXT;
ALTER TABLE card_log_entries ADD COLUMN deny_code INTEGER;
ALTER TABLE card_log_entries ADD COLUMN free_device INTEGER NOT NULL DEFAULT 0;
ALTER TABLE card_log_entries ADD COLUMN consent_pin INTEGER;

CREATE TABLE enrolment_nonces (
    dev_id        TEXT PRIMARY KEY,
    nonce         BLOB NOT NULL,
    created_ms    INTEGER NOT NULL
);
