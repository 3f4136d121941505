//! `ApiKey` records from any bytes: never a panic; whatever loads keeps its
//! invariants and serializes back to itself.
#![no_main]

use keyroll::{ApiKey, RenewalState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(key) = serde_json::from_slice::<ApiKey>(data) else { return };
    assert!(key.version() >= 1);
    assert_eq!(key.old_token().is_some(), matches!(key.state(), RenewalState::Renewing { .. }));
    if let Some(old) = key.old_token() {
        assert_ne!(old.id(), key.current_token().id());
    }
    let again: ApiKey = serde_json::from_str(&serde_json::to_string(&key).unwrap()).unwrap();
    assert_eq!(again, key);
    let _ = key.verify("kr_x", time::OffsetDateTime::UNIX_EPOCH);
});
