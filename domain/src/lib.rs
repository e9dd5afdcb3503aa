//! The pure core of etc-shadow.
//!
//! This crate owns the rules that must be identical wherever they run: how entry paths
//! are normalised, how an entry and a whole entry set are hashed, how each configuration
//! format is validated (with its resource limits), how two texts are diffed, how the audit
//! chain is computed, and what each role may do. It compiles to wasm32 as well as to the
//! host, so the console validates as you type with the very code the server trusts.
//!
//! It must not know about databases, HTTP, files or clocks: callers pass values in and
//! get values out, which keeps every rule unit-testable in microseconds.

pub mod api;
pub mod audit;
pub mod diff;
pub mod drift;
pub mod format;
pub mod hash;
pub mod keys;
pub mod path;
pub mod policy;
pub mod protocol;
pub mod redact;
pub mod role;
pub mod rollout;

pub use format::{Format, ValidationError};
pub use hash::Hash;
pub use path::EntryPath;
pub use policy::Policy;
pub use role::Role;
