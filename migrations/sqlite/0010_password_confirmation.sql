-- When the session's user last entered their password (at sign-in, or again through
-- POST /api/v1/session/confirm). Sensitive actions (approve, roll out, reconcile, reveal,
-- API tokens, user and role changes) need it within the recent window.
ALTER TABLE sessions ADD COLUMN password_at TEXT;
UPDATE sessions SET password_at = created_at;
