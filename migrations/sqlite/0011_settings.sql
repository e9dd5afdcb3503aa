-- Values the control plane remembers between starts. `secret_keys`: the key patterns of
-- secret values inside entries (see domain::redact) under which stored contents were last
-- checked; when the configured patterns differ, contents are checked again and those
-- holding secret values are sealed.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
