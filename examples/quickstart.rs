//! The whole renewal story of one key, in under a minute.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Every step checks that keyroll behaved as documented; the process exits
//! non-zero at the first step that did not.

use std::process::ExitCode;

use keyroll::store::InMemoryStore;
use keyroll::{
    ApiKey, Event, Freshness, KeyId, KeyManager, NewKey, OldTokenDeletion, Policy,
    RenewalEnforcement, RenewalState, TokenFormat, TokenMatch, TransitionError, VerifyError,
};
use pollster::block_on;
use time::{Duration, OffsetDateTime};

/// Prints one step and checks it.
fn step(ok: bool, what: &str) -> Result<(), String> {
    println!("  {} {what}", if ok { "ok  " } else { "FAIL" });
    if ok { Ok(()) } else { Err(what.to_owned()) }
}

fn show(event: &Event) {
    println!(
        "  event {}",
        serde_json::to_string(event).expect("events serialize")
    );
}

fn run() -> Result<(), String> {
    let mut rng = rand::rng();
    let day0 = OffsetDateTime::now_utc();
    let day = |n: i64| day0 + Duration::days(n);

    println!("1. issue a key");
    let id = KeyId::new("acme-orders").map_err(|e| e.to_string())?;
    let (mut key, first, event) =
        ApiKey::issue(NewKey::new(id).label("orders service"), day(0), &mut rng)
            .map_err(|e| e.to_string())?;
    show(&event);
    println!("  token (shown once): {}", first.expose_secret());
    step(
        KeyId::from_token(first.expose_secret()).as_ref() == Ok(key.id()),
        "the token names its key: one string is enough (Authorization: Bearer <token>)",
    )?;
    step(
        key.verify(first.expose_secret(), day(0)) == Ok(TokenMatch::Current),
        "the first token verifies",
    )?;
    step(
        key.verify("kr_not-a-token", day(0)) == Err(VerifyError::Malformed),
        "a typo is malformed",
    )?;

    println!("2. renew on day 80: both tokens work");
    let (second, event) = key.renew(day(80), &mut rng).map_err(|e| e.to_string())?;
    show(&event);
    step(
        key.verify(second.expose_secret(), day(80)) == Ok(TokenMatch::Current),
        "the new token is current",
    )?;
    step(
        key.verify(first.expose_secret(), day(80)) == Ok(TokenMatch::Old),
        "the old token still works",
    )?;
    step(
        key.renew(day(80), &mut rng).err() == Some(TransitionError::RenewalPending),
        "a second renewal is refused",
    )?;

    println!("3. finalize Later, then delete the old token");
    show(
        &key.finalize(OldTokenDeletion::Later, day(80))
            .map_err(|e| e.to_string())?,
    );
    step(
        key.verify(first.expose_secret(), day(85)) == Ok(TokenMatch::Old),
        "Later keeps the old token",
    )?;
    show(&key.delete_old(day(87)).map_err(|e| e.to_string())?);
    step(
        key.verify(first.expose_secret(), day(87)) == Err(VerifyError::Mismatch),
        "the deleted token fails",
    )?;

    println!("4. renew and undo");
    let (third, event) = key.renew(day(100), &mut rng).map_err(|e| e.to_string())?;
    show(&event);
    show(&key.undo_renewal(day(100)).map_err(|e| e.to_string())?);
    step(
        key.verify(third.expose_secret(), day(100)) == Err(VerifyError::Mismatch),
        "the discarded token fails",
    )?;
    step(
        key.verify(second.expose_secret(), day(100)) == Ok(TokenMatch::Current),
        "the restored token is current",
    )?;
    step(
        key.undo_renewal(day(100)).err() == Some(TransitionError::NoOldToken),
        "undo twice is refused",
    )?;

    println!("5. renew and delete the old token now, in one step");
    let (fourth, event) = key
        .renew_with(OldTokenDeletion::Now, day(120), &mut rng)
        .map_err(|e| e.to_string())?;
    show(&event);
    step(
        key.state() == RenewalState::Single,
        "only one token is left",
    )?;
    step(
        key.verify(second.expose_secret(), day(120)) == Err(VerifyError::Mismatch),
        "the old token is gone",
    )?;
    step(
        key.verify(fourth.expose_secret(), day(120)) == Ok(TokenMatch::Current),
        "the new token works",
    )?;

    println!("6. deactivate and activate");
    show(&key.deactivate(day(121)).map_err(|e| e.to_string())?);
    step(
        key.verify(fourth.expose_secret(), day(121)) == Err(VerifyError::KeyInactive),
        "inactive keys refuse",
    )?;
    show(&key.activate(day(122)).map_err(|e| e.to_string())?);
    step(
        key.verify(fourth.expose_secret(), day(122)) == Ok(TokenMatch::Current),
        "active again",
    )?;

    println!("7. freshness of the current token (renewed on day 120, due on day 210)");
    for n in [150, 210, 299, 300] {
        let freshness = key.freshness(day(n));
        let label = match freshness {
            Freshness::Fresh { .. } => "fresh",
            Freshness::Outdated { .. } => "outdated (orange)",
            Freshness::LongOutdated { .. } => "long outdated (red)",
        };
        println!("  day {n}: {label}");
    }
    step(
        matches!(key.freshness(day(209)), Freshness::Fresh { .. }),
        "fresh before its due date",
    )?;
    step(
        matches!(key.freshness(day(210)), Freshness::Outdated { .. }),
        "outdated from its due date",
    )?;
    step(
        matches!(key.freshness(day(300)), Freshness::LongOutdated { .. }),
        "long outdated 90 days after",
    )?;
    step(
        key.verify(fourth.expose_secret(), day(400)).is_ok(),
        "advisory: an outdated token still works",
    )?;

    let enforced = Policy {
        enforcement: RenewalEnforcement::Enforced,
        ..Policy::default()
    };
    let (strict, token, _) = ApiKey::issue(
        NewKey::new(KeyId::generate(&mut rng))
            .label("strict")
            .policy(enforced),
        day(0),
        &mut rng,
    )
    .map_err(|e| e.to_string())?;
    step(
        strict.verify(token.expose_secret(), day(90)) == Err(VerifyError::RenewalOverdue),
        "enforced: an overdue token is refused",
    )?;

    println!("8. delete the old token only once the new one is in use");
    let (fifth, event) = key.renew(day(130), &mut rng).map_err(|e| e.to_string())?;
    show(&event);
    let grace = Duration::hours(1);
    show(
        &key.finalize(OldTokenDeletion::AfterNewTokenUse { grace }, day(130))
            .map_err(|e| e.to_string())?,
    );
    step(
        key.verify(fourth.expose_secret(), day(140)) == Ok(TokenMatch::Old),
        "unused new token: the old one lives on",
    )?;
    let first_use = day(141);
    let matched = key
        .verify(fifth.expose_secret(), first_use)
        .map_err(|e| e.to_string())?;
    step(
        key.record_use(matched, first_use),
        "the first use of the new token is recorded",
    )?;
    println!("  state: {:?}", key.state());
    step(
        key.verify(fourth.expose_secret(), first_use + Duration::minutes(59))
            .is_ok(),
        "the old token works during the grace",
    )?;
    step(
        key.verify(fourth.expose_secret(), first_use + grace) == Err(VerifyError::Mismatch),
        "then it stops",
    )?;
    let event = key
        .housekeep(first_use + grace)
        .ok_or("housekeep found nothing due")?;
    show(&event);
    step(key.state() == RenewalState::Single, "housekeep removed it")?;
    step(
        key.current_token().last_used_at() == Some(first_use),
        "last use is known",
    )?;

    println!("9. the stored record holds hashes only");
    let record = serde_json::to_string(&key).map_err(|e| e.to_string())?;
    println!("  {record}");
    step(
        !record.contains(&fifth.expose_secret()[fifth.expose_secret().len() - 46..]),
        "no secret in the record",
    )?;
    let loaded: ApiKey = serde_json::from_str(&record).map_err(|e| e.to_string())?;
    step(
        loaded == key && loaded.verify(fifth.expose_secret(), day(142)).is_ok(),
        "it loads back",
    )?;

    println!("10. a service: one-string bearer tokens through a manager and a store");
    // The manager is async; a program without a runtime drives it with any
    // `block_on` (the in-memory store's futures complete at once).
    let manager = KeyManager::new(InMemoryStore::new());
    let (token, _) = block_on(manager.create_key(
        KeyId::new("acme-billing").map_err(|e| e.to_string())?,
        day(0),
        &mut rng,
    ))
    .map_err(|e| e.to_string())?;
    let who =
        block_on(manager.authenticate(token.expose_secret(), day(1))).map_err(|e| e.to_string())?;
    step(
        who.key_id.as_str() == "acme-billing" && who.matched == TokenMatch::Current,
        "authenticate(token) finds the key and checks the token",
    )?;

    println!("11. the token leaks: a secret scanner reports it, and it is revoked");
    println!(
        "  scanners look for {}",
        TokenFormat::default().scan_pattern()
    );
    let event = block_on(manager.revoke_token(token.expose_secret(), day(2)))
        .map_err(|e| e.to_string())?
        .ok_or("nothing was revoked")?;
    show(&event);
    step(
        block_on(manager.authenticate(token.expose_secret(), day(2))).is_err(),
        "the leaked token never verifies again",
    )?;
    let (fresh, _) =
        block_on(manager.renew(&who.key_id, day(2), &mut rng)).map_err(|e| e.to_string())?;
    let stored = block_on(manager.get(&who.key_id)).map_err(|e| e.to_string())?;
    step(
        block_on(manager.authenticate(fresh.expose_secret(), day(2))).is_ok()
            && stored.and_then(|k| k.old_token().cloned()).is_none(),
        "a renewal hands out a new token, with no old one to delete",
    )?;
    println!("version {}: all steps behaved as documented", key.version());
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(step) => {
            eprintln!("quickstart failed at: {step}");
            ExitCode::FAILURE
        }
    }
}
