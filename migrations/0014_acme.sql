-- v14: ACME. A route may take its certificate from ACME (`acme`, off for every earlier row);
-- the node's ACME account per directory (instant-acme's credentials, JSON: it holds the
-- account's private key) and the certificates issued per hostname (PEM chain and key), in
-- this file, which is mode 0600.
ALTER TABLE routes ADD COLUMN acme INTEGER NOT NULL DEFAULT 0;
CREATE TABLE acme_accounts (
    directory   TEXT PRIMARY KEY,
    credentials TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE acme_certificates (
    hostname  TEXT PRIMARY KEY,
    chain_pem TEXT NOT NULL,
    key_pem   TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    issued_at INTEGER NOT NULL
);
