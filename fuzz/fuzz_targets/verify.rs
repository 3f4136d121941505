//! Token parsing and `verify` on any bytes: never a panic, and nothing but
//! the key's own tokens ever verifies.
#![no_main]

use std::sync::OnceLock;

use keyroll::{ApiKey, KeyId, TokenFormat, VerifyError};
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;

/// A renewing key and its two tokens, made once.
fn key() -> &'static (ApiKey, String, String) {
    static KEY: OnceLock<(ApiKey, String, String)> = OnceLock::new();
    KEY.get_or_init(|| {
        let now = OffsetDateTime::UNIX_EPOCH;
        let (mut key, old, _) = ApiKey::issue(KeyId::new("fuzz").unwrap(), now, &mut rand::rng()).unwrap();
        let (new, _) = key.renew(now, &mut rand::rng()).unwrap();
        (key, old.expose_secret().to_owned(), new.expose_secret().to_owned())
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (key, old, new) = key();
    let result = key.verify(text, OffsetDateTime::UNIX_EPOCH);
    if result.is_ok() {
        // One of the key's two tokens: the framing of keyroll 0.1 (the
        // same secret without the key id) verifies only for keys that 0.1
        // issued, and this one was issued now.
        assert!(text == old || text == new, "{text:?} verified");
    }
    if TokenFormat::default().check(text).is_err() && text.len() != 3 + 46 {
        assert_eq!(result, Err(VerifyError::Malformed));
    }
});
