-- simfota server schema, SQLite flavour. Keep in step with ../postgres/0005_campaign_card.sql.
-- What a campaign does with a device that cannot take a card-gated update (no SIMFOTA card
-- subtree, or no verified card): 'required' fails its job with the reason, 'optional'
-- delivers plain FUMO without a token and records the result as not card-attested.
ALTER TABLE campaigns ADD COLUMN card TEXT NOT NULL DEFAULT 'required';
