-- v7: an L7 route's per-request access log (one `mc_proxy::request` line per request). Off for
-- every earlier row, as before the column existed.
ALTER TABLE routes ADD COLUMN access_log INTEGER NOT NULL DEFAULT 0;
