-- Shadows: named replica targets and what was last observed of them.
CREATE TABLE shadows (
    id                INTEGER PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    driver            TEXT NOT NULL CHECK (driver IN ('agent', 'directory')),
    -- agent: base URL and bearer token; directory: the live path.
    url               TEXT,
    token             TEXT,
    path              TEXT,
    labels            TEXT NOT NULL DEFAULT '{}',
    status            TEXT NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('in_sync', 'drifted', 'stale', 'unreachable', 'fenced', 'pending', 'rolling_out')),
    observed_root     TEXT,
    observed_revision INTEGER,
    last_contact_at   TEXT,
    last_in_sync_at   TEXT,
    last_error        TEXT,
    created_at        TEXT NOT NULL
);

-- The root each shadow answered when it prepared (the receipt_root is its commit answer).
ALTER TABLE rollout_shadows ADD COLUMN staged_root TEXT;
-- The root shadows were expected to serve when the rollout started.
ALTER TABLE rollouts ADD COLUMN base_root TEXT;
-- For reconcile rollouts: the one shadow targeted.
ALTER TABLE rollouts ADD COLUMN target_shadow TEXT;
