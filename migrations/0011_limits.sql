-- v11: abuse limits. A listener's limits per client address (0: off; IPv6 clients grouped by
-- a /64 by default), and a route's access lists and request limits as one JSON object (the
-- shared model's RouteLimits, whose fields default when absent: a limit added later needs no
-- migration). Every earlier listener and route has none.
ALTER TABLE listeners ADD COLUMN max_conns_per_client INTEGER NOT NULL DEFAULT 0;
ALTER TABLE listeners ADD COLUMN new_conns_per_client INTEGER NOT NULL DEFAULT 0;
ALTER TABLE listeners ADD COLUMN new_conns_burst INTEGER NOT NULL DEFAULT 0;
ALTER TABLE listeners ADD COLUMN client_ipv6_prefix INTEGER NOT NULL DEFAULT 64;
ALTER TABLE routes ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
