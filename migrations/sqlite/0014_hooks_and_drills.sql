-- Hooks and drills (DESIGN "Agent hooks and drills").
--
-- 1. A rollout shadow's hook run: the validate hook's refusal at prepare, or the reload
--    hook's run after the commit (JSON of domain::protocol::HookRun, secrets masked).
ALTER TABLE rollout_shadows ADD COLUMN hook TEXT;

-- 2. Two incident kinds that are not drift: `reload_failed` (the files are committed, the
--    service may still run the old ones) and `drill_failed` (a shadow could not take over).
--    They live beside a shadow's drift episode, so the "one unresolved incident per shadow"
--    rule now holds for drift kinds only, and each of the two kinds has at most one
--    unresolved incident per shadow of its own. SQLite cannot alter a CHECK, so the table
--    is rebuilt with its children (children first, so no foreign key is left dangling).
CREATE TABLE incidents_next (
    id            INTEGER PRIMARY KEY,
    shadow        TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('content', 'policy', 'missing', 'unexpected', 'stale', 'unreachable', 'fenced', 'reload_failed', 'drill_failed')),
    kinds         TEXT NOT NULL,
    severity      TEXT NOT NULL CHECK (severity IN ('critical', 'high', 'medium')),
    status        TEXT NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    opened_at     TEXT NOT NULL,
    last_seen_at  TEXT NOT NULL,
    resolved_at   TEXT,
    resolution    TEXT,
    expected_root TEXT NOT NULL,
    observed_root TEXT,
    -- `poll`, `event`, `rollout` (a reload hook) or `drill`.
    detected_by   TEXT NOT NULL,
    fingerprint   TEXT NOT NULL
);
INSERT INTO incidents_next SELECT id, shadow, kind, kinds, severity, status, opened_at, last_seen_at, resolved_at,
    resolution, expected_root, observed_root, detected_by, fingerprint FROM incidents;

CREATE TABLE incident_entries_next (
    incident_id     INTEGER NOT NULL REFERENCES incidents_next (id) ON DELETE CASCADE,
    path            TEXT NOT NULL,
    kind            TEXT NOT NULL,
    expected_hash   TEXT,
    observed_hash   TEXT,
    expected_policy TEXT,
    observed_policy TEXT,
    PRIMARY KEY (incident_id, path)
);
INSERT INTO incident_entries_next SELECT incident_id, path, kind, expected_hash, observed_hash, expected_policy, observed_policy
    FROM incident_entries;

CREATE TABLE incident_events_next (
    id          INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL REFERENCES incidents_next (id) ON DELETE CASCADE,
    at          TEXT NOT NULL,
    actor       TEXT NOT NULL,
    event       TEXT NOT NULL,
    details     TEXT NOT NULL DEFAULT '{}'
);
INSERT INTO incident_events_next SELECT id, incident_id, at, actor, event, details FROM incident_events;

DROP TABLE incident_entries;
DROP TABLE incident_events;
DROP TABLE incidents;
ALTER TABLE incidents_next RENAME TO incidents;
ALTER TABLE incident_entries_next RENAME TO incident_entries;
ALTER TABLE incident_events_next RENAME TO incident_events;
CREATE INDEX incidents_status ON incidents (status, id);
CREATE INDEX incidents_shadow ON incidents (shadow, id);
CREATE INDEX incidents_kind ON incidents (kind, id);
CREATE INDEX incidents_opened ON incidents (opened_at);
CREATE INDEX incidents_shadow_opened ON incidents (shadow, opened_at);
CREATE UNIQUE INDEX incidents_one_open ON incidents (shadow)
    WHERE status != 'resolved' AND kind NOT IN ('reload_failed', 'drill_failed');
CREATE UNIQUE INDEX incidents_one_open_operation ON incidents (shadow, kind)
    WHERE status != 'resolved' AND kind IN ('reload_failed', 'drill_failed');
CREATE INDEX incident_events_incident ON incident_events (incident_id, id);

-- 3. Drills: the evidence that a shadow could take over (who, when, each step).
CREATE TABLE drills (
    id            INTEGER PRIMARY KEY,
    shadow        TEXT NOT NULL,
    -- A user's name, or `scheduler`.
    requested_by  TEXT NOT NULL,
    started_at    TEXT NOT NULL,
    finished_at   TEXT NOT NULL,
    -- `passed` when every step that ran passed; `failed` otherwise.
    verdict       TEXT NOT NULL CHECK (verdict IN ('passed', 'failed')),
    -- The current revision and its root when the drill ran, and what the shadow served.
    revision      INTEGER NOT NULL,
    expected_root TEXT NOT NULL,
    observed_root TEXT,
    -- JSON list of domain::api::DrillStep (outputs masked).
    steps         TEXT NOT NULL
);
CREATE INDEX drills_shadow ON drills (shadow, id);
