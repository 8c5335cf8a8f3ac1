-- v3: per-listener list of peers trusted to send a PROXY protocol header.
-- Comma-separated CIDRs; empty means any peer may (the header is still mandatory when
-- proxy_protocol is on).
ALTER TABLE listeners ADD COLUMN proxy_protocol_from TEXT NOT NULL DEFAULT '';
