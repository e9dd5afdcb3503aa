-- Drift incidents: one row per drift episode on one shadow, updated while it lasts.
CREATE TABLE incidents (
    id            INTEGER PRIMARY KEY,
    shadow        TEXT NOT NULL,
    -- The most severe kind; `kinds` lists every kind seen in this episode (comma-separated).
    kind          TEXT NOT NULL CHECK (kind IN ('content', 'policy', 'missing', 'unexpected', 'stale', 'unreachable', 'fenced')),
    kinds         TEXT NOT NULL,
    severity      TEXT NOT NULL CHECK (severity IN ('critical', 'high', 'medium')),
    status        TEXT NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    opened_at     TEXT NOT NULL,
    last_seen_at  TEXT NOT NULL,
    resolved_at   TEXT,
    -- self_healed, reconciled, adopted or resolved (by hand, with a note).
    resolution    TEXT,
    expected_root TEXT NOT NULL,
    observed_root TEXT,
    -- How the drift was first noticed: `poll` or `event`.
    detected_by   TEXT NOT NULL,
    -- A digest of what differs, so repeated checks that see the same thing add nothing.
    fingerprint   TEXT NOT NULL
);
CREATE INDEX incidents_status ON incidents (status, id);
CREATE INDEX incidents_shadow ON incidents (shadow, id);
CREATE INDEX incidents_kind ON incidents (kind, id);
CREATE INDEX incidents_opened ON incidents (opened_at);
-- At most one unresolved incident per shadow.
CREATE UNIQUE INDEX incidents_one_open ON incidents (shadow) WHERE status != 'resolved';

-- What differs, entry by entry, as last seen.
CREATE TABLE incident_entries (
    incident_id     INTEGER NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    path            TEXT NOT NULL,
    kind            TEXT NOT NULL,
    expected_hash   TEXT,
    observed_hash   TEXT,
    expected_policy TEXT,
    observed_policy TEXT,
    PRIMARY KEY (incident_id, path)
);

-- The timeline: detected, changed, acknowledged, reconcile started/finished, resolved.
CREATE TABLE incident_events (
    id          INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    at          TEXT NOT NULL,
    actor       TEXT NOT NULL,
    event       TEXT NOT NULL,
    details     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX incident_events_incident ON incident_events (incident_id, id);

-- Consecutive failed checks per shadow (an `unreachable` incident opens at the threshold).
ALTER TABLE shadows ADD COLUMN failed_checks INTEGER NOT NULL DEFAULT 0;
