-- v9: a listener's name, what shared (cluster) routes name it by, so that nodes binding different
-- addresses can share them. Existing listeners are named by their address, the default; names
-- are unique like addresses (ALTER TABLE cannot add a UNIQUE column: a unique index instead).
ALTER TABLE listeners ADD COLUMN name TEXT NOT NULL DEFAULT '';
UPDATE listeners SET name = addr;
CREATE UNIQUE INDEX listeners_name ON listeners (name);
