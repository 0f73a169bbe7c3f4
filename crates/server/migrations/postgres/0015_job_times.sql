-- simfota server schema, PostgreSQL flavour. Keep in step with ../sqlite/0015_job_times.sql.
-- When a job was offered and when it was delivered, for the campaign page's progress over
-- time: `released_ms` is set by the statement that releases the job's wave (a first-wave job
-- is offered when its campaign is created, its `created_ms`), `delivered_ms` by the statement
-- that marks it delivered (a later delivery replaces it). A finished job's end is its
-- `updated_ms`. Jobs released or delivered before this migration keep NULL here: the page
-- draws them from what is known and says that the history is partial.
ALTER TABLE jobs ADD COLUMN released_ms BIGINT;
ALTER TABLE jobs ADD COLUMN delivered_ms BIGINT;
