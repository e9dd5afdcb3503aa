//! The few SQL texts that differ between SQLite and PostgreSQL; every other query is one
//! text for both. Times are stored as RFC 3339 UTC text with milliseconds
//! ("2026-11-25T13:45:00.123Z") on both engines, so they compare and sort as text, and
//! only arithmetic on them needs the engine's own functions.

use crate::db::{Db, Engine};

/// The function that answers where a text occurs in another (`f(haystack, needle)`,
/// 0 when it does not).
pub fn find(db: &Db) -> &'static str {
    match db.engine() {
        Engine::Sqlite => "instr",
        Engine::Postgres => "strpos",
    }
}

/// Seconds from the stored time `earlier` to the stored time `later` (SQL expressions),
/// as a double.
pub fn seconds_between(db: &Db, later: &str, earlier: &str) -> String {
    match db.engine() {
        Engine::Sqlite => format!("((julianday({later}) - julianday({earlier})) * 86400.0)"),
        Engine::Postgres => {
            format!("CAST(EXTRACT(EPOCH FROM (CAST({later} AS timestamptz) - CAST({earlier} AS timestamptz))) AS DOUBLE PRECISION)")
        }
    }
}

/// Seconds from the stored time `earlier` (an SQL expression) to now, as a double.
pub fn seconds_since(db: &Db, earlier: &str) -> String {
    match db.engine() {
        Engine::Sqlite => seconds_between(db, "'now'", earlier),
        Engine::Postgres => seconds_between(db, "now()", earlier),
    }
}

/// The stored time `at` (an SQL expression) one hour earlier, in the stored format.
pub fn hour_before(db: &Db, at: &str) -> String {
    match db.engine() {
        Engine::Sqlite => format!("strftime('%Y-%m-%dT%H:%M:%fZ', {at}, '-1 hour')"),
        Engine::Postgres => {
            format!("to_char((CAST({at} AS timestamptz) - interval '1 hour') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
        }
    }
}
