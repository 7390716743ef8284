-- Tenant secrets and the incarnation tokens are bound to.
--
-- users.added_seq is the stream sequence of the UserAdded that created the row: a JWT carries it
-- (`useq`), so a token of a user who was removed and added again under the same id is refused
-- whatever the timing. Rows projected before this column existed get it only where it is known
-- for certain (never updated: the last event was the addition); the others have none, and
-- their tokens fall back to the issued-after-added rule until the read model is rebuilt.
ALTER TABLE users ADD COLUMN added_seq bigint;
UPDATE users SET added_seq = last_seq WHERE added_at = updated_at;

-- Values a tenant wrote and nobody reads back, sealed (XChaCha20-Poly1305) with the platform's
-- key `key_id`, bound to (tenant, name, version). Not a read model: the values never travel in
-- events (TenantSecretSet carries the name, version and fingerprint only), so this table is
-- written by the secrets command and is not rebuilt from the streams; back it up with the
-- database. The tenant role gets no grant on it: no tenant-scoped query can reach it. A deleted
-- secret keeps its row, emptied (deleted_at set), so its versions keep counting up and a version
-- names one value for good. `origin`, when set, is the only origin the value may be sent to.
CREATE TABLE tenant_secrets (
    tenant      text        NOT NULL,
    name        text        NOT NULL,
    version     integer     NOT NULL CHECK (version > 0),
    key_id      text        NOT NULL,
    nonce       bytea       NOT NULL,
    ciphertext  bytea       NOT NULL,
    fingerprint text        NOT NULL,
    origin      text,
    set_by      text        NOT NULL,
    set_at      timestamptz NOT NULL,
    deleted_at  timestamptz,
    PRIMARY KEY (tenant, name)
);
