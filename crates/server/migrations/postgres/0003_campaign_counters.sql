-- simfota server schema, PostgreSQL flavour. Keep in step with ../sqlite/0003_campaign_counters.sql.
-- Campaign progress kept with the campaign and changed in the transaction that changes a job
-- (campaign::Progress), instead of counted from its jobs at every read and every result; and
-- how many times each job was delivered (a job its device lost is offered again, a bounded
-- number of times: campaign::reoffer).
ALTER TABLE jobs ADD COLUMN deliveries BIGINT NOT NULL DEFAULT 0;
UPDATE jobs SET deliveries = 1 WHERE update_id IS NOT NULL;
ALTER TABLE campaigns ADD COLUMN jobs_total BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN jobs_released BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN jobs_delivered BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN jobs_succeeded BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN jobs_failed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN jobs_cancelled BIGINT NOT NULL DEFAULT 0;
UPDATE campaigns SET
    jobs_total = (SELECT COUNT(*) FROM jobs j WHERE j.campaign_id = campaigns.id),
    jobs_released = (SELECT COUNT(*) FROM jobs j WHERE j.campaign_id = campaigns.id
                     AND j.wave <= campaigns.current_wave),
    jobs_delivered = (SELECT COUNT(*) FROM jobs j WHERE j.campaign_id = campaigns.id
                      AND j.state = 'delivered'),
    jobs_succeeded = (SELECT COUNT(*) FROM jobs j WHERE j.campaign_id = campaigns.id
                      AND j.state = 'succeeded'),
    jobs_failed = (SELECT COUNT(*) FROM jobs j WHERE j.campaign_id = campaigns.id
                   AND j.state = 'failed'),
    jobs_cancelled = (SELECT COUNT(*) FROM jobs j WHERE j.campaign_id = campaigns.id
                      AND j.state = 'cancelled');
