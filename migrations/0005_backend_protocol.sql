-- v5: the HTTP version an L7 route speaks to its backend: 'h2', 'http1' or 'auto'. The default
-- is what every earlier row meant: HTTP/2 (h2c, or h2 over TLS with backend_tls).
-- No CHECK, unlike mode: SQLite cannot change a CHECK without rebuilding the table, and this
-- set may grow; the store refuses a value it cannot parse when it reads the row.
ALTER TABLE routes ADD COLUMN backend_protocol TEXT NOT NULL DEFAULT 'h2';
