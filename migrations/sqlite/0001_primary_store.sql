-- The primary store, change review, users and the audit log.
-- Times are RFC 3339 UTC text ("2026-11-25T13:45:00.123Z"); hashes are 64 lowercase hex digits.

-- Identity of this control plane. `id` is made once, with the database; `epoch` is raised
-- durably at every start and sent with every write to a shadow (fencing).
CREATE TABLE control_plane (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    id         TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    created_at TEXT NOT NULL
);

-- Content-addressed file contents, stored once per content hash.
CREATE TABLE blobs (
    hash    TEXT PRIMARY KEY,
    content BLOB NOT NULL,
    size    INTEGER NOT NULL
);

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    -- argon2id PHC string; never the password.
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'approver', 'admin')),
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL
);

-- Server-side sessions. Only the blake3 hash of the cookie value is stored, so a copy of
-- the database does not hand out live sessions.
CREATE TABLE sessions (
    id_hash      TEXT PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    expires_at   TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

-- API tokens, stored hashed like sessions; `role` is at most the owner's role.
CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'approver', 'admin')),
    created_at   TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT
);

-- Immutable snapshots of the whole entry set. Revision 0 is the empty set, made with the
-- database, so every change has a base.
CREATE TABLE revisions (
    number     INTEGER PRIMARY KEY,
    root       TEXT NOT NULL,
    parent     INTEGER REFERENCES revisions (number),
    author     TEXT NOT NULL,
    message    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    change_id  INTEGER
);

CREATE TABLE revision_entries (
    revision   INTEGER NOT NULL REFERENCES revisions (number),
    path       TEXT NOT NULL,
    blob       TEXT NOT NULL REFERENCES blobs (hash),
    format     TEXT NOT NULL,
    mode       INTEGER NOT NULL,
    owner      TEXT NOT NULL,
    grp        TEXT NOT NULL,
    secret     INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    entry_hash TEXT NOT NULL,
    PRIMARY KEY (revision, path)
);

-- Proposed edit sets on top of a base revision.
CREATE TABLE changes (
    id            INTEGER PRIMARY KEY,
    base_revision INTEGER NOT NULL REFERENCES revisions (number),
    message       TEXT NOT NULL,
    author_id     INTEGER NOT NULL REFERENCES users (id),
    state         TEXT NOT NULL CHECK (state IN ('draft', 'submitted', 'approved', 'rejected', 'rolled_out', 'superseded')),
    -- Hash of base, message and operations (docs/hashing.md); approvals sign it.
    content_hash  TEXT NOT NULL,
    rejected_by   INTEGER REFERENCES users (id),
    reject_reason TEXT,
    -- The revision this change became once rolled out.
    revision      INTEGER REFERENCES revisions (number),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX changes_state ON changes (state);

CREATE TABLE change_entries (
    change_id  INTEGER NOT NULL REFERENCES changes (id) ON DELETE CASCADE,
    path       TEXT NOT NULL,
    op         TEXT NOT NULL CHECK (op IN ('put', 'delete')),
    -- For deletes the policy columns describe the entry being removed.
    blob       TEXT REFERENCES blobs (hash),
    format     TEXT NOT NULL,
    mode       INTEGER NOT NULL,
    owner      TEXT NOT NULL,
    grp        TEXT NOT NULL,
    secret     INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    entry_hash TEXT NOT NULL,
    PRIMARY KEY (change_id, path)
);

-- An approval is valid only while its content_hash equals the change's content_hash.
CREATE TABLE approvals (
    id           INTEGER PRIMARY KEY,
    change_id    INTEGER NOT NULL REFERENCES changes (id) ON DELETE CASCADE,
    approver_id  INTEGER NOT NULL REFERENCES users (id),
    content_hash TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    UNIQUE (change_id, approver_id, content_hash)
);

-- Rollouts and their per-shadow journal. With no shadows a rollout is decided and applied
-- in one transaction; the shadow phases are used once shadows exist.
CREATE TABLE rollouts (
    id          INTEGER PRIMARY KEY,
    change_id   INTEGER REFERENCES changes (id),
    kind        TEXT NOT NULL CHECK (kind IN ('change', 'reconcile')),
    revision    INTEGER NOT NULL,
    root        TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('preparing', 'committing', 'applied', 'failed', 'aborted')),
    -- NULL until the coordinator logs its decision: 'commit' or 'abort'.
    decision    TEXT CHECK (decision IN ('commit', 'abort')),
    started_by  TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    error       TEXT
);

CREATE TABLE rollout_shadows (
    rollout_id   INTEGER NOT NULL REFERENCES rollouts (id),
    shadow       TEXT NOT NULL,
    phase        TEXT NOT NULL,
    receipt_root TEXT,
    error        TEXT,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (rollout_id, shadow)
);

-- Append-only, hash-chained log of every state change (docs/hashing.md, "Audit chain").
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_action ON audit_log (action);
CREATE INDEX audit_actor ON audit_log (actor);
