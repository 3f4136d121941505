//! One-string authentication on any bytes, over an in-memory store with a
//! few keys: never a panic; anything `KeyId::from_token` refuses is
//! `Malformed`; nothing but a stored key's own tokens authenticates, and as
//! that key.
#![no_main]

use std::sync::OnceLock;

use keyroll::store::InMemoryStore;
use keyroll::{AuthError, KeyId, KeyManager, VerifyError};
use pollster::block_on;
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;

/// A manager over a store of a few keys (one renewing, ids with `_`, `.`
/// and `-`), and every token handed out with the id of its key.
fn keys() -> &'static (KeyManager<InMemoryStore>, Vec<(String, KeyId)>) {
    static KEYS: OnceLock<(KeyManager<InMemoryStore>, Vec<(String, KeyId)>)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let now = OffsetDateTime::UNIX_EPOCH;
        let manager = KeyManager::new(InMemoryStore::new());
        let mut tokens = Vec::new();
        for id in ["k", "acme_orders", "a.b-c_d", "x_"] {
            let id = KeyId::new(id).unwrap();
            let (token, _) = block_on(manager.create_key(id.clone(), now, &mut rand::rng())).unwrap();
            tokens.push((token.expose_secret().to_owned(), id));
        }
        let id = KeyId::new("acme_orders").unwrap();
        let (token, _) = block_on(manager.renew(&id, now, &mut rand::rng())).unwrap();
        tokens.push((token.expose_secret().to_owned(), id));
        (manager, tokens)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (manager, tokens) = keys();
    let named = KeyId::from_token(text);
    let result = block_on(manager.authenticate(text, OffsetDateTime::UNIX_EPOCH));
    match (&named, &result) {
        (Err(_), Err(AuthError::Verify(VerifyError::Malformed))) => {}
        (Err(_), other) => panic!("{text:?} names no key but gave {other:?}"),
        (Ok(id), Ok(authenticated)) => {
            assert_eq!(&authenticated.key_id, id);
            assert!(tokens.iter().any(|(t, k)| t == text && k == id), "{text:?} authenticated");
        }
        (Ok(_), Err(_)) => {}
    }
});
