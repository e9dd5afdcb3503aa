-- Failed sign-ins, so a brute force slows down and a restart does not reset it.
-- `key` is `user:<id>` for an account, `name:<name>` for a name no account has, and
-- `addr:<address>` for a client address (IPv6 by /64). Rows of accounts are never evicted;
-- the other two pools are capped, oldest first, so a flood of random names or addresses
-- cannot grow the table without bound or push an account's record out.
CREATE TABLE login_throttle (
    key             TEXT PRIMARY KEY,
    pool            TEXT NOT NULL CHECK (pool IN ('account', 'name', 'address')),
    failures        INTEGER NOT NULL,
    last_failure_at TEXT NOT NULL,
    blocked_until   TEXT
);
CREATE INDEX login_throttle_pool ON login_throttle (pool, last_failure_at);
