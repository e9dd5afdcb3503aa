-- The rollout lifecycle of domain::rollout: a committed rollout may end 'incomplete' (a
-- shadow committed but proved another root, lost its staging, or an operator released it),
-- and every phase of a shadow is one of domain::rollout::Phase. SQLite cannot alter a CHECK,
-- so both tables are rebuilt (the child first, so no foreign key is left dangling).
CREATE TABLE rollouts_next (
    id            INTEGER PRIMARY KEY,
    change_id     INTEGER REFERENCES changes (id),
    kind          TEXT NOT NULL CHECK (kind IN ('change', 'reconcile')),
    revision      INTEGER NOT NULL,
    root          TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('preparing', 'committing', 'applied', 'incomplete', 'failed', 'aborted')),
    -- NULL until the coordinator logs its decision: 'commit' or 'abort'.
    decision      TEXT CHECK (decision IN ('commit', 'abort')),
    started_by    TEXT NOT NULL,
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    error         TEXT,
    -- The root shadows were expected to serve when the rollout started.
    base_root     TEXT,
    -- For reconcile rollouts: the one shadow targeted.
    target_shadow TEXT
);
INSERT INTO rollouts_next (id, change_id, kind, revision, root, state, decision, started_by, started_at, finished_at, error, base_root, target_shadow)
    SELECT id, change_id, kind, revision, root, state, decision, started_by, started_at, finished_at, error, base_root, target_shadow FROM rollouts;

CREATE TABLE rollout_shadows_next (
    rollout_id   INTEGER NOT NULL REFERENCES rollouts_next (id),
    shadow       TEXT NOT NULL,
    phase        TEXT NOT NULL
                 CHECK (phase IN ('pending', 'prepared', 'refused', 'committed', 'mismatch', 'lost', 'released', 'removed', 'aborted')),
    -- The root the shadow answered when it prepared; the receipt is its commit answer.
    staged_root  TEXT,
    receipt_root TEXT,
    error        TEXT,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (rollout_id, shadow)
);
INSERT INTO rollout_shadows_next (rollout_id, shadow, phase, staged_root, receipt_root, error, updated_at)
    SELECT rollout_id, shadow, phase, staged_root, receipt_root, error, updated_at FROM rollout_shadows;

DROP TABLE rollout_shadows;
DROP TABLE rollouts;
ALTER TABLE rollouts_next RENAME TO rollouts;
ALTER TABLE rollout_shadows_next RENAME TO rollout_shadows;
CREATE INDEX rollouts_change ON rollouts (change_id);
-- Open rollouts (not yet in a terminal state) are the ones without finished_at.
CREATE INDEX rollouts_open ON rollouts (id) WHERE finished_at IS NULL;
