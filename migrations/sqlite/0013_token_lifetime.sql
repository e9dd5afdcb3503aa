-- API tokens stop working at `expires_at` (90 days by default, at most 365). Tokens made
-- before this migration get 90 days from it, so an upgrade cuts nobody off at once.
ALTER TABLE api_tokens ADD COLUMN expires_at TEXT;
UPDATE api_tokens SET expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+90 days') WHERE expires_at IS NULL;
