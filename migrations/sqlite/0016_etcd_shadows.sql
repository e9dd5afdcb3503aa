-- etcd shadows (control/src/etcd.rs): a key prefix in an etcd cluster. `url` holds the
-- endpoints (comma-separated), `token` the sealed password of `etcd_user` when there is
-- one. The driver's CHECK grows, which SQLite does by rebuilding the table.
CREATE TABLE shadows_next (
    id                     INTEGER PRIMARY KEY,
    name                   TEXT NOT NULL UNIQUE,
    driver                 TEXT NOT NULL CHECK (driver IN ('agent', 'directory', 'etcd')),
    url                    TEXT,
    token                  TEXT,
    path                   TEXT,
    labels                 TEXT NOT NULL DEFAULT '{}',
    status                 TEXT NOT NULL DEFAULT 'pending'
                           CHECK (status IN ('in_sync', 'drifted', 'stale', 'unreachable', 'fenced', 'pending', 'rolling_out')),
    observed_root          TEXT,
    observed_revision      INTEGER,
    last_contact_at        TEXT,
    last_in_sync_at        TEXT,
    last_error             TEXT,
    created_at             TEXT NOT NULL,
    tls_pin                TEXT,
    failed_checks          INTEGER NOT NULL DEFAULT 0,
    etcd_prefix            TEXT,
    etcd_user              TEXT,
    -- The CA certificate (PEM) the members' certificates are checked against.
    etcd_ca                TEXT,
    etcd_max_txn_ops       INTEGER,
    etcd_max_request_bytes INTEGER,
    CHECK (driver <> 'etcd' OR (url IS NOT NULL AND etcd_prefix IS NOT NULL))
);

INSERT INTO shadows_next (id, name, driver, url, token, path, labels, status, observed_root, observed_revision,
    last_contact_at, last_in_sync_at, last_error, created_at, tls_pin, failed_checks)
    SELECT id, name, driver, url, token, path, labels, status, observed_root, observed_revision,
    last_contact_at, last_in_sync_at, last_error, created_at, tls_pin, failed_checks FROM shadows;

DROP TABLE shadows;
ALTER TABLE shadows_next RENAME TO shadows;
