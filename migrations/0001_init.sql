-- v1: the L4 router's schema. Listeners own their routes; firewall rules are global.
CREATE TABLE listeners (
    id   INTEGER PRIMARY KEY,
    addr TEXT NOT NULL UNIQUE
);

CREATE TABLE routes (
    id          INTEGER PRIMARY KEY,
    listener_id INTEGER NOT NULL REFERENCES listeners(id) ON DELETE CASCADE,
    hostname    TEXT NOT NULL,
    backend     TEXT NOT NULL,
    UNIQUE (listener_id, hostname)
);

CREATE TABLE firewall_rules (
    id    INTEGER PRIMARY KEY,
    kind  TEXT NOT NULL CHECK (kind IN ('ip', 'cidr')),
    value TEXT NOT NULL,
    UNIQUE (kind, value)
);
