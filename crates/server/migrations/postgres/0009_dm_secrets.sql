-- simfota server schema, PostgreSQL flavour. Keep in step with ../sqlite/0009_dm_secrets.sql.
-- DM credentials are kept as the digest the protocol needs, not in clear (DM Security 1.2
-- §5.3.2, §5.5: MD5 and HMAC start from B64(H(name:password))): `dm_secret` for the device's
-- (name: its DM user name), `server_secret` for the server's (name: the ServerID). The clear
-- columns stay empty; rows written before this migration are converted by the server at its
-- start (`registry::protect_stored_passwords`), since SQL has no portable MD5.
ALTER TABLE devices ADD COLUMN dm_secret TEXT;
ALTER TABLE devices ADD COLUMN server_secret TEXT;
