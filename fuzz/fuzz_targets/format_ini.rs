//! The ini validator on arbitrary bytes: an answer (valid or a located error), never a
//! panic, a hang or unbounded memory.
#![no_main]

use domain::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|content: &[u8]| {
    if let Err(err) = domain::format::validate(Format::Ini, content) {
        // The error names a place inside the input.
        assert!(err.line >= 1 && err.column >= 1, "{err:?}");
    }
});
