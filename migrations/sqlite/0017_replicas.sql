-- The control plane's replicas (serve --etcd): each writes its own row every few seconds,
-- so the console can show which ones are up and when a gone one was last seen. Who leads
-- is etcd's to say, not this table's.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY NOT NULL,
    address TEXT NOT NULL,
    started_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL
);
