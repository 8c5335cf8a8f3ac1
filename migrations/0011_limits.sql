-- v11: abuse limits. A listener's limits per client address (0: off; IPv6 clients grouped by
-- a /64 by default). Every earlier listener has them off.
ALTER TABLE listeners ADD COLUMN max_conns_per_client INTEGER NOT NULL DEFAULT 0;
ALTER TABLE listeners ADD COLUMN new_conns_per_client INTEGER NOT NULL DEFAULT 0;
ALTER TABLE listeners ADD COLUMN new_conns_burst INTEGER NOT NULL DEFAULT 0;
ALTER TABLE listeners ADD COLUMN client_ipv6_prefix INTEGER NOT NULL DEFAULT 64;
