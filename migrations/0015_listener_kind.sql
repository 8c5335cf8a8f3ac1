-- v15: listener kinds. `tls` (every earlier row) routes TLS by SNI; `http` is a plain-HTTP
-- listener that answers ACME http-01 challenges and redirects every other request to
-- https:// on `redirect_port` (0: 443). Both are fixed when the listener is added.
ALTER TABLE listeners ADD COLUMN kind TEXT NOT NULL DEFAULT 'tls';
ALTER TABLE listeners ADD COLUMN redirect_port INTEGER NOT NULL DEFAULT 0;
