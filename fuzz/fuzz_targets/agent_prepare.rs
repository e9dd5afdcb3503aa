//! The agent's prepare request, from the bytes of its body to the store's checks (fence,
//! paths, modes, owners, the entries' root) and, when the fuzzer learns a matching root
//! from the comparisons it traces, durable staging. Whatever the body: an answer, never a
//! panic, and the live files unchanged (only a commit switches them).
#![no_main]

use domain::protocol::PrepareRequest;
use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};

struct Shadow {
    _dir: tempfile::TempDir,
    store: store::Store,
}

fn shadow() -> &'static Mutex<Shadow> {
    static SHADOW: OnceLock<Mutex<Shadow>> = OnceLock::new();
    SHADOW.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = store::Store::open(&dir.path().join("live"), &dir.path().join("state"), Some("fuzz".into()))
            .expect("open the store");
        Mutex::new(Shadow { _dir: dir, store })
    })
}

fuzz_target!(|body: &[u8]| {
    let Ok(request) = serde_json::from_slice::<PrepareRequest>(body) else { return };
    let mut shadow = shadow().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let before = shadow.store.live_root().expect("live root");
    if shadow.store.prepare(1, &request).is_ok() {
        let _ = shadow.store.abort(1, &domain::protocol::Fence {
            control_plane_id: request.control_plane_id.clone(),
            epoch: request.epoch,
            target_root: None,
        });
    }
    assert_eq!(shadow.store.live_root().expect("live root"), before, "prepare never changes the live files");
});
