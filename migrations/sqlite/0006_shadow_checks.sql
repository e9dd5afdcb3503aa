-- Check history per shadow (the newest 500 are kept): when, why, what was seen, how long.
CREATE TABLE shadow_checks (
    id            INTEGER PRIMARY KEY,
    shadow        TEXT NOT NULL,
    at            TEXT NOT NULL,
    -- poll, event, rollout or manual.
    trigger       TEXT NOT NULL,
    status        TEXT NOT NULL,
    observed_root TEXT,
    latency_ms    INTEGER NOT NULL,
    error         TEXT
);
CREATE INDEX shadow_checks_shadow ON shadow_checks (shadow, id);
