-- simfota server schema, SQLite flavour. Keep in step with ../postgres/0010_dashboard_sessions.sql.
-- Dashboard sign-in without the API token in a URL or a cookie (`dashboard::signin`):
-- a session per sign-in, its cookie holding a random id of which only the SHA-256 is kept,
-- tied to the API token it was opened with (revoking the token ends it) and expiring; and
-- one-time sign-in links an operator (or a tool) asks the API for, used once within a minute.
CREATE TABLE ui_sessions (
    id_hash       BLOB PRIMARY KEY,
    token_id      INTEGER NOT NULL REFERENCES api_tokens(id),
    created_ms    INTEGER NOT NULL,
    expires_ms    INTEGER NOT NULL
);
CREATE TABLE ui_links (
    code_hash     BLOB PRIMARY KEY,
    token_id      INTEGER NOT NULL REFERENCES api_tokens(id),
    next          TEXT NOT NULL,
    expires_ms    INTEGER NOT NULL
);
