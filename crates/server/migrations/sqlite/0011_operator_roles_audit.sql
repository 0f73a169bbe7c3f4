-- simfota server schema, SQLite flavour. Keep in step with ../postgres/0011_operator_roles_audit.sql.
-- Operator identities: each API token has a role (`viewer` reads, `operator` runs the fleet,
-- `admin` also manages tokens and relays issuer admin commands). Tokens from before had every
-- right: they become `admin`.
ALTER TABLE api_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'admin';
-- Who did what, when, from where: every state-changing operator request and dashboard sign-in.
CREATE TABLE audit_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ms    INTEGER NOT NULL,
    token_id      INTEGER,
    token_name    TEXT NOT NULL,
    role          TEXT NOT NULL,
    action        TEXT NOT NULL,
    status        INTEGER NOT NULL,
    source        TEXT NOT NULL
);
