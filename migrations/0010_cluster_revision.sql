-- v10: on a cluster node, the etcd revision of the fleet's table this database reflects, and
-- the prefix it belongs to (a node moved to another prefix starts from nothing). One row.
CREATE TABLE cluster_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    prefix TEXT NOT NULL,
    revision INTEGER NOT NULL
);
