-- v6: a route's backend is a set of members, each with a weight and an admin state, picked by
-- the route's balance; a route may have an active health check.
-- Forward-only and non-destructive: every existing route becomes a one-member set (its
-- `backend`, position 0, weight 1, enabled), round robin, no health check. The old `backend`
-- column stays (SQLite cannot drop a NOT NULL column without rebuilding the table) and keeps
-- the first member's address, written by the store with every route write.
CREATE TABLE backends (
    id          INTEGER PRIMARY KEY,
    route_id    INTEGER NOT NULL REFERENCES routes(id) ON DELETE CASCADE,
    address     TEXT NOT NULL,
    weight      INTEGER NOT NULL DEFAULT 1,
    -- The operator's order, 0-based: what lists show and round robin starts from.
    position    INTEGER NOT NULL,
    -- 'enabled', 'draining' or 'disabled'; no CHECK for the same reason as backend_protocol
    -- (v5): the store refuses a value it cannot parse when it reads the row.
    admin_state TEXT NOT NULL DEFAULT 'enabled',
    UNIQUE (route_id, address),
    UNIQUE (route_id, position)
);

INSERT INTO backends (route_id, address, weight, position, admin_state)
    SELECT id, backend, 1, 0, 'enabled' FROM routes;

ALTER TABLE routes ADD COLUMN balance TEXT NOT NULL DEFAULT 'round_robin';
-- The health check: check_interval_ms NULL means the route has none, and the other check_*
-- columns are then meaningless.
ALTER TABLE routes ADD COLUMN check_interval_ms INTEGER;
ALTER TABLE routes ADD COLUMN check_timeout_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE routes ADD COLUMN check_rise INTEGER NOT NULL DEFAULT 0;
ALTER TABLE routes ADD COLUMN check_fall INTEGER NOT NULL DEFAULT 0;
ALTER TABLE routes ADD COLUMN check_path TEXT NOT NULL DEFAULT '';
ALTER TABLE routes ADD COLUMN check_expect TEXT NOT NULL DEFAULT '';
