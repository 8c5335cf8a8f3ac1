-- v8: a listener's per-request access log, stored like its other settings (it was read from
-- the TOML at every start before listeners changed at run time). Off for every earlier row.
ALTER TABLE listeners ADD COLUMN access_log INTEGER NOT NULL DEFAULT 0;
