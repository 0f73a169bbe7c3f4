-- simfota server schema, SQLite flavour. Keep in step with ../postgres/0001_initial.sql:
-- same tables, columns and constraints; only the type names differ. Times are Unix milliseconds.

CREATE TABLE devices (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
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
    device_nonce    BLOB,
    server_nonce    BLOB,
    enrolled_by     TEXT NOT NULL,
    created_ms      INTEGER NOT NULL,
    last_seen_ms    INTEGER
);

CREATE TABLE device_groups (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    name    TEXT NOT NULL UNIQUE
);

CREATE TABLE group_members (
    group_id  INTEGER NOT NULL REFERENCES device_groups(id) ON DELETE CASCADE,
    device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, device_id)
);

CREATE TABLE cards (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    iccid           TEXT NOT NULL UNIQUE,
    imsi            TEXT,
    card_pub        BLOB,
    certificate     BLOB,
    cert_status     TEXT NOT NULL DEFAULT 'unchecked',
    info            BLOB,
    servers         BLOB,
    servers_json    TEXT,
    policy          BLOB,
    policy_json     TEXT,
    log_head_seq    INTEGER,
    log_head_hash   BLOB,
    log_status      TEXT NOT NULL DEFAULT 'ok',
    acked_seq       INTEGER,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL
);

CREATE TABLE packages (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT NOT NULL,
    version          TEXT NOT NULL,
    originator       TEXT NOT NULL,
    vendor_id        BLOB,
    class_id         BLOB,
    sequence         INTEGER NOT NULL,
    manifest_digest  BLOB NOT NULL UNIQUE,
    image_digest     BLOB NOT NULL,
    image_size       INTEGER NOT NULL,
    precursor_digest BLOB,
    envelope         BLOB NOT NULL,
    payload_file     TEXT NOT NULL,
    payload_etag     TEXT NOT NULL,
    created_ms       INTEGER NOT NULL
);

CREATE TABLE campaigns (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    name                TEXT NOT NULL,
    package_id          INTEGER NOT NULL REFERENCES packages(id),
    target_model        TEXT,
    target_fw           TEXT,
    target_group        TEXT,
    waves               TEXT NOT NULL,
    success_threshold   INTEGER NOT NULL,
    error_threshold     INTEGER NOT NULL,
    state               TEXT NOT NULL,
    current_wave        INTEGER NOT NULL,
    halt_reason         TEXT,
    created_ms          INTEGER NOT NULL,
    updated_ms          INTEGER NOT NULL
);

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id      INTEGER NOT NULL REFERENCES campaigns(id),
    device_id        INTEGER NOT NULL REFERENCES devices(id),
    wave             INTEGER NOT NULL,
    state            TEXT NOT NULL,
    fumo_state       INTEGER,
    result_code      INTEGER,
    correlator       TEXT NOT NULL UNIQUE,
    update_id        BLOB UNIQUE,
    token            BLOB,
    receipt          BLOB,
    receipt_status   TEXT,
    detail           TEXT,
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL,
    UNIQUE (campaign_id, device_id)
);
CREATE INDEX jobs_device_state ON jobs(device_id, state);

CREATE TABLE dm_sessions (
    device_id     INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    session_id    TEXT NOT NULL,
    next_msg_id   INTEGER NOT NULL,
    version       INTEGER NOT NULL,
    state         BLOB NOT NULL,
    updated_ms    INTEGER NOT NULL,
    PRIMARY KEY (device_id, session_id)
);

CREATE TABLE log_requests (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    card_id       INTEGER NOT NULL REFERENCES cards(id),
    device_id     INTEGER REFERENCES devices(id),
    card_nonce    BLOB NOT NULL,
    first_seq     INTEGER NOT NULL,
    request       BLOB NOT NULL,
    state         TEXT NOT NULL,
    created_ms    INTEGER NOT NULL
);

CREATE TABLE log_exports (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    card_id       INTEGER REFERENCES cards(id),
    device_id     INTEGER REFERENCES devices(id),
    request_id    INTEGER REFERENCES log_requests(id),
    raw           BLOB NOT NULL,
    verdict       TEXT NOT NULL,
    reason        TEXT,
    first_seq     INTEGER,
    last_seq      INTEGER,
    received_ms   INTEGER NOT NULL
);

CREATE TABLE card_log_entries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    card_id         INTEGER NOT NULL REFERENCES cards(id),
    seq             INTEGER NOT NULL,
    raw             BLOB NOT NULL,
    entry_hash      BLOB NOT NULL,
    prev_hash       BLOB NOT NULL,
    event           TEXT NOT NULL,
    detail          TEXT,
    update_id       BLOB,
    server_id       TEXT,
    originator      TEXT,
    release_name    TEXT,
    release_version TEXT,
    manifest_digest BLOB,
    imei            TEXT,
    trusted_time    INTEGER,
    device_time     INTEGER,
    fumo_result     INTEGER,
    export_id       INTEGER NOT NULL REFERENCES log_exports(id),
    stored_ms       INTEGER NOT NULL,
    UNIQUE (card_id, seq)
);

CREATE TABLE admin_queue (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    card_id       INTEGER NOT NULL REFERENCES cards(id),
    command       BLOB NOT NULL,
    note          TEXT,
    state         TEXT NOT NULL,
    result        BLOB,
    created_ms    INTEGER NOT NULL,
    sent_ms       INTEGER,
    done_ms       INTEGER
);

CREATE TABLE api_tokens (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL,
    token_hash    BLOB NOT NULL UNIQUE,
    revoked       INTEGER NOT NULL DEFAULT 0,
    created_ms    INTEGER NOT NULL
);

CREATE TABLE security_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL,
    device_id     INTEGER,
    card_id       INTEGER,
    detail        TEXT NOT NULL,
    created_ms    INTEGER NOT NULL
);
