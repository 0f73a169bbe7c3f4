-- simfota server schema, PostgreSQL flavour. Keep in step with ../sqlite/0012_safe_campaigns_lists.sql.
--
-- Safe campaigns: a job may end `skipped` (its device is already at or above the package);
-- a failed job keeps its reason in words (`reason`, what the failure breakdown counts);
-- a campaign may carry a deadline, a daily maintenance window (UTC minutes of the day) and a
-- per-wave failure limit that pauses it (`paused_reason`).
--
-- A device can be deleted while its jobs stay (they are evidence, with the proofs that read
-- them): a job keeps its device's IMEI and the card it was delivered to, and `jobs.device_id`
-- no longer references `devices` (SQLite cannot drop a foreign key: it rebuilds the table).
-- begin postgres only
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_device_id_fkey;
ALTER TABLE jobs ADD COLUMN reason TEXT;
ALTER TABLE jobs ADD COLUMN device_imei TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN iccid TEXT;
UPDATE jobs SET
    reason = CASE WHEN state <> 'failed' THEN NULL
                  WHEN result_code IS NOT NULL THEN 'device reported ' || result_code
                  ELSE 'failed before reasons were recorded' END,
    device_imei = COALESCE((SELECT d.imei FROM devices d WHERE d.id = jobs.device_id), ''),
    iccid = CASE WHEN update_id IS NULL THEN NULL
                 ELSE (SELECT d.iccid FROM devices d WHERE d.id = jobs.device_id) END;
-- end postgres only
CREATE INDEX jobs_device_imei ON jobs(device_imei, id);
CREATE INDEX jobs_campaign_state ON jobs(campaign_id, state, id);
CREATE INDEX jobs_campaign_reason ON jobs(campaign_id, reason, id);
CREATE INDEX jobs_state ON jobs(state, id);

ALTER TABLE campaigns ADD COLUMN jobs_skipped BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN deadline_ms BIGINT;
ALTER TABLE campaigns ADD COLUMN window_start BIGINT;
ALTER TABLE campaigns ADD COLUMN window_end BIGINT;
ALTER TABLE campaigns ADD COLUMN max_failure_pct BIGINT;
ALTER TABLE campaigns ADD COLUMN include_up_to_date BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN paused_reason TEXT;
CREATE INDEX campaigns_state ON campaigns(state, id);
CREATE INDEX campaigns_package ON campaigns(package_id, state);

-- Per-wave job counts, changed with each job (campaign::WaveProgress), never recounted on a read.
CREATE TABLE campaign_waves (
    campaign_id  BIGINT NOT NULL REFERENCES campaigns(id),
    wave         BIGINT NOT NULL,
    waiting      BIGINT NOT NULL DEFAULT 0,
    pending      BIGINT NOT NULL DEFAULT 0,
    delivered    BIGINT NOT NULL DEFAULT 0,
    succeeded    BIGINT NOT NULL DEFAULT 0,
    failed       BIGINT NOT NULL DEFAULT 0,
    skipped      BIGINT NOT NULL DEFAULT 0,
    cancelled    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, wave)
);
INSERT INTO campaign_waves (campaign_id, wave, waiting, pending, delivered, succeeded, failed,
    skipped, cancelled)
SELECT campaign_id, wave,
    SUM(CASE WHEN state = 'waiting' THEN 1 ELSE 0 END),
    SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END),
    SUM(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END),
    SUM(CASE WHEN state = 'succeeded' THEN 1 ELSE 0 END),
    SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END),
    0,
    SUM(CASE WHEN state = 'cancelled' THEN 1 ELSE 0 END)
FROM jobs GROUP BY campaign_id, wave;

-- Failed jobs per campaign and reason (the failure breakdown), changed with each job.
CREATE TABLE campaign_failures (
    campaign_id  BIGINT NOT NULL REFERENCES campaigns(id),
    reason       TEXT NOT NULL,
    n            BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, reason)
);
INSERT INTO campaign_failures (campaign_id, reason, n)
SELECT campaign_id, reason, COUNT(*) FROM jobs WHERE state = 'failed' GROUP BY campaign_id, reason;

-- A deleted package keeps its row (campaigns and proofs name it); its payload file goes.
ALTER TABLE packages ADD COLUMN deleted_ms BIGINT;
CREATE INDEX packages_name ON packages(name, id);

-- The list filters and sort orders of the API (keyset pagination on each).
CREATE INDEX devices_model ON devices(model, id);
CREATE INDEX devices_fw_version ON devices(fw_version, id);
CREATE INDEX devices_last_seen ON devices((COALESCE(last_seen_ms, 0)), id);
CREATE INDEX card_log_entries_update ON card_log_entries(update_id);
