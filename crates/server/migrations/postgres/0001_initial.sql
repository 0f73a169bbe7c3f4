-- simfota server schema, PostgreSQL flavour. Keep in step with ../sqlite/0001_initial.sql:
-- same tables, columns and constraints; only the type names differ. Times are Unix milliseconds.

CREATE TABLE devices (
    id              BIGSERIAL PRIMARY KEY,
    imei            TEXT NOT NULL UNIQUE,
    dm_username     TEXT NOT NULL UNIQUE,
    dm_password     TEXT NOT NULL,
    server_password TEXT NOT NULL,
    auth_scheme     TEXT NOT NULL DEFAULT 'md5',
    manufacturer    TEXT,
    model           TEXT,
    fw_version      TEXT,
    dev_detail      TEXT,
    notify_addr     TEXT,
    iccid           TEXT,
    device_nonce    BYTEA,
    server_nonce    BYTEA,
    enrolled_by     TEXT NOT NULL,
    created_ms      BIGINT NOT NULL,
    last_seen_ms    BIGINT
);

CREATE TABLE device_groups (
    id      BIGSERIAL PRIMARY KEY,
    name    TEXT NOT NULL UNIQUE
);

CREATE TABLE group_members (
    group_id  BIGINT NOT NULL REFERENCES device_groups(id) ON DELETE CASCADE,
    device_id BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, device_id)
);

CREATE TABLE cards (
    id              BIGSERIAL PRIMARY KEY,
    iccid           TEXT NOT NULL UNIQUE,
    imsi            TEXT,
    card_pub        BYTEA,
    certificate     BYTEA,
    cert_status     TEXT NOT NULL DEFAULT 'unchecked',
    info            BYTEA,
    servers         BYTEA,
    servers_json    TEXT,
    policy          BYTEA,
    policy_json     TEXT,
    log_head_seq    BIGINT,
    log_head_hash   BYTEA,
    log_status      TEXT NOT NULL DEFAULT 'ok',
    acked_seq       BIGINT,
    created_ms      BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL
);

CREATE TABLE packages (
    id               BIGSERIAL PRIMARY KEY,
    name             TEXT NOT NULL,
    version          TEXT NOT NULL,
    originator       TEXT NOT NULL,
    vendor_id        BYTEA,
    class_id         BYTEA,
    sequence         BIGINT NOT NULL,
    manifest_digest  BYTEA NOT NULL UNIQUE,
    image_digest     BYTEA NOT NULL,
    image_size       BIGINT NOT NULL,
    precursor_digest BYTEA,
    envelope         BYTEA NOT NULL,
    payload_file     TEXT NOT NULL,
    payload_etag     TEXT NOT NULL,
    created_ms       BIGINT NOT NULL
);

CREATE TABLE campaigns (
    id                  BIGSERIAL PRIMARY KEY,
    name                TEXT NOT NULL,
    package_id          BIGINT NOT NULL REFERENCES packages(id),
    target_model        TEXT,
    target_fw           TEXT,
    target_group        TEXT,
    waves               TEXT NOT NULL,
    success_threshold   BIGINT NOT NULL,
    error_threshold     BIGINT NOT NULL,
    state               TEXT NOT NULL,
    current_wave        BIGINT NOT NULL,
    halt_reason         TEXT,
    created_ms          BIGINT NOT NULL,
    updated_ms          BIGINT NOT NULL
);

CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    campaign_id      BIGINT NOT NULL REFERENCES campaigns(id),
    device_id        BIGINT NOT NULL REFERENCES devices(id),
    wave             BIGINT NOT NULL,
    state            TEXT NOT NULL,
    fumo_state       BIGINT,
    result_code      BIGINT,
    correlator       TEXT NOT NULL UNIQUE,
    update_id        BYTEA UNIQUE,
    token            BYTEA,
    receipt          BYTEA,
    receipt_status   TEXT,
    detail           TEXT,
    created_ms       BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL,
    UNIQUE (campaign_id, device_id)
);
CREATE INDEX jobs_device_state ON jobs(device_id, state);

CREATE TABLE dm_sessions (
    device_id     BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    session_id    TEXT NOT NULL,
    next_msg_id   BIGINT NOT NULL,
    version       BIGINT NOT NULL,
    state         BYTEA NOT NULL,
    updated_ms    BIGINT NOT NULL,
    PRIMARY KEY (device_id, session_id)
);

CREATE TABLE log_requests (
    id            BIGSERIAL PRIMARY KEY,
    card_id       BIGINT NOT NULL REFERENCES cards(id),
    device_id     BIGINT REFERENCES devices(id),
    card_nonce    BYTEA NOT NULL,
    first_seq     BIGINT NOT NULL,
    request       BYTEA NOT NULL,
    state         TEXT NOT NULL,
    created_ms    BIGINT NOT NULL
);

CREATE TABLE log_exports (
    id            BIGSERIAL PRIMARY KEY,
    card_id       BIGINT REFERENCES cards(id),
    device_id     BIGINT REFERENCES devices(id),
    request_id    BIGINT REFERENCES log_requests(id),
    raw           BYTEA NOT NULL,
    verdict       TEXT NOT NULL,
    reason        TEXT,
    first_seq     BIGINT,
    last_seq      BIGINT,
    received_ms   BIGINT NOT NULL
);

CREATE TABLE card_log_entries (
    id              BIGSERIAL PRIMARY KEY,
    card_id         BIGINT NOT NULL REFERENCES cards(id),
    seq             BIGINT NOT NULL,
    raw             BYTEA NOT NULL,
    entry_hash      BYTEA NOT NULL,
    prev_hash       BYTEA NOT NULL,
    event           TEXT NOT NULL,
    detail          TEXT,
    update_id       BYTEA,
    server_id       TEXT,
    originator      TEXT,
    release_name    TEXT,
    release_version TEXT,
    manifest_digest BYTEA,
    imei            TEXT,
    trusted_time    BIGINT,
    device_time     BIGINT,
    fumo_result     BIGINT,
    export_id       BIGINT NOT NULL REFERENCES log_exports(id),
    stored_ms       BIGINT NOT NULL,
    UNIQUE (card_id, seq)
);

CREATE TABLE admin_queue (
    id            BIGSERIAL PRIMARY KEY,
    card_id       BIGINT NOT NULL REFERENCES cards(id),
    command       BYTEA NOT NULL,
    note          TEXT,
    state         TEXT NOT NULL,
    result        BYTEA,
    created_ms    BIGINT NOT NULL,
    sent_ms       BIGINT,
    done_ms       BIGINT
);

CREATE TABLE api_tokens (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL,
    token_hash    BYTEA NOT NULL UNIQUE,
    revoked       BIGINT NOT NULL DEFAULT 0,
    created_ms    BIGINT NOT NULL
);

CREATE TABLE security_events (
    id            BIGSERIAL PRIMARY KEY,
    kind          TEXT NOT NULL,
    device_id     BIGINT,
    card_id       BIGINT,
    detail        TEXT NOT NULL,
    created_ms    BIGINT NOT NULL
);
