//! Events keep their JSON byte for byte: audit pipelines parse it. Every
//! variant (and each shape of its optional fields) is made by the
//! transitions that emit it, from a seeded random source and fixed instants,
//! and compared with `tests/golden/events.jsonl`, written by keyroll 0.3.
//! Each golden line also loads back into an `Event` that writes it again.
//!
//! Regenerate only for a deliberate change of the wire format:
//! `KEYROLL_WRITE_GOLDEN=1 cargo test --test events_golden`.
#![cfg(feature = "serde")]

use keyroll::meter::{Credits, RateLimit, Refill};
use keyroll::store::InMemoryStore;
use keyroll::{
    ApiKey, Event, KeyId, KeyManager, Metadata, NewKey, OldTokenDeletion, OwnerId, Scopes,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use time::{Duration, OffsetDateTime};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/events.jsonl");

fn t(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_767_225_600 + seconds).unwrap()
}

/// Every kind of event, in a fixed order.
fn events() -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(2026);
    let mut out = Vec::new();
    let new = NewKey::new(KeyId::new("acme-orders").unwrap())
        .label("orders \"v1\"")
        .scopes(Scopes::new(["orders:read", "orders:write"]).unwrap())
        .metadata(Metadata::new([("team", "shop"), ("tier", "gold")]).unwrap())
        .expires_at(t(86_400 * 365));
    let (mut key, _, issued) = ApiKey::issue(new, t(0), &mut rng).unwrap();
    out.push(issued);
    out.push(
        ApiKey::issue(KeyId::new("plain").unwrap(), t(1), &mut rng)
            .unwrap()
            .2,
    );

    let (_, renewed) = key.renew(t(10), &mut rng).unwrap();
    out.push(renewed);
    out.push(key.finalize(OldTokenDeletion::Later, t(11)).unwrap());
    out.push(key.delete_old(t(12)).unwrap());
    let (_, renewed) = key
        .renew_with(OldTokenDeletion::Now, t(13), &mut rng)
        .unwrap();
    out.push(renewed);
    key.renew(t(14), &mut rng).unwrap();
    out.push(key.finalize(OldTokenDeletion::At(t(100)), t(15)).unwrap());
    // Renewing past a deletion that is due: deleted as scheduled first.
    let (_, renewed) = key.renew(t(200), &mut rng).unwrap();
    out.push(renewed);
    out.push(
        key.finalize(
            OldTokenDeletion::AfterNewTokenUse {
                grace: Duration::hours(1),
            },
            t(201),
        )
        .unwrap(),
    );
    out.push(key.undo_renewal(t(202)).unwrap());
    key.renew(t(203), &mut rng).unwrap();
    out.push(key.finalize(OldTokenDeletion::Now, t(204)).unwrap());
    let (current, _) = key.renew(t(205), &mut rng).unwrap();
    key.finalize(OldTokenDeletion::At(t(300)), t(206)).unwrap();
    out.push(key.housekeep(t(301)).unwrap());

    // Revocations: an old token, then the current one; then a renewal that
    // drops the revoked current token.
    let (newest, _) = key.renew(t(310), &mut rng).unwrap();
    out.push(key.revoke_token(current.expose_secret(), t(311)).unwrap());
    out.push(key.revoke_token(newest.expose_secret(), t(312)).unwrap());
    let (_, renewed) = key.renew(t(313), &mut rng).unwrap();
    out.push(renewed);

    out.push(key.deactivate(t(400)).unwrap());
    out.push(key.activate(t(401)).unwrap());
    out.push(key.set_label("orders v2", t(402)).unwrap());
    out.push(
        key.set_scopes(Scopes::new(["admin"]).unwrap(), t(403))
            .unwrap(),
    );
    out.push(key.set_scopes(Scopes::default(), t(404)).unwrap());
    out.push(
        key.set_metadata(Metadata::new([("a", "b")]).unwrap(), t(405))
            .unwrap(),
    );
    out.push(key.set_expiry(Some(t(9_999)), t(406)).unwrap());
    out.push(key.set_expiry(None, t(407)).unwrap());
    out.push(
        key.set_owner(Some(OwnerId::new("acme").unwrap()), t(408))
            .unwrap(),
    );
    out.push(key.set_owner(None, t(409)).unwrap());
    let rate = RateLimit::new(100, Duration::MINUTE)
        .unwrap()
        .with_burst(20)
        .unwrap();
    out.push(key.set_rate_limit(Some(rate), t(410)).unwrap());
    out.push(key.set_rate_limit(None, t(411)).unwrap());
    let credits = Credits::new(1_000).with_refill(Refill::new(500, Duration::days(30)).unwrap());
    out.push(key.set_credits(Some(credits), t(412)).unwrap());
    out.push(key.set_credits(Some(Credits::new(7)), t(413)).unwrap());
    out.push(key.set_credits(None, t(414)).unwrap());

    let manager = KeyManager::new(InMemoryStore::new());
    pollster::block_on(async {
        let id = KeyId::new("doomed").unwrap();
        manager
            .create_key(id.clone(), t(500), &mut rng)
            .await
            .unwrap();
        out.push(manager.delete_key(&id, t(501)).await.unwrap());
    });
    out
}

#[test]
fn every_event_keeps_its_json_byte_for_byte() {
    let written: Vec<String> = events()
        .iter()
        .map(|event| serde_json::to_string(event).unwrap())
        .collect();
    if std::env::var_os("KEYROLL_WRITE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, written.join("\n") + "\n").unwrap();
    }
    let golden = std::fs::read_to_string(GOLDEN).unwrap();
    let golden: Vec<&str> = golden.lines().collect();
    assert_eq!(written.len(), golden.len(), "one line per event");
    for (ours, theirs) in written.iter().zip(&golden) {
        assert_eq!(ours, theirs);
        let back: Event = serde_json::from_str(theirs).unwrap();
        assert_eq!(&serde_json::to_string(&back).unwrap(), theirs);
    }
    // Every variant of the enum is there.
    let names: std::collections::BTreeSet<&str> = events().iter().map(Event::name).collect();
    assert_eq!(names.len(), 16, "{names:?}");
}
