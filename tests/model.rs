//! Model-based tests: random sequences of operations applied to the
//! reference model of `keyroll::testing` and to (a) an `ApiKey`, (b) a
//! `KeyManager` over `InMemoryStore`. After every step the answers, the
//! state, the status, the version and the token ids must agree, and only the
//! current and the live old token may verify.
#![cfg(all(feature = "proptest", feature = "serde"))]

use std::collections::HashSet;
use std::sync::Arc;

use keyroll::meter::{Allowance, Refusal, StoredMeter};
use keyroll::store::{InMemoryStore, KeyStore, Verification};
use keyroll::testing::{CLIENT_IP, Charged, Expected, Model, Op};
use keyroll::{
    ApiKey, Change, KeyId, KeyManager, KeyStatus, ManagerError, NewKey, OldTokenDeletion,
    RenewalState, Token, TokenId, TokenMatch, TransitionError, VerifyError,
};
use pollster::block_on;
use proptest::test_runner::{Config, FileFailurePersistence};
use proptest_state_machine::{StateMachineTest, prop_state_machine};
use rand::SeedableRng;
use rand::rngs::StdRng;
use time::OffsetDateTime;

/// What the harness needs of a system that manages one key.
trait Subject: Sized {
    fn start(id: KeyId, now: OffsetDateTime, rng: &mut StdRng) -> (Self, Token);
    /// Renew, or with a deletion, renew with it.
    fn renew(
        &mut self,
        deletion: Option<OldTokenDeletion>,
        now: OffsetDateTime,
        rng: &mut StdRng,
    ) -> Result<Token, TransitionError>;
    /// Finalize, delete-old, undo, activate, deactivate, and the set_* calls.
    fn transition(&mut self, op: &Op, now: OffsetDateTime) -> Result<(), TransitionError>;
    fn verify(&self, token: &str, now: OffsetDateTime) -> Result<TokenMatch, VerifyError>;
    /// Authenticate: verify, charge 1 if the key has limits, then record
    /// the use if admitted (`Used` with whether the key changed).
    fn use_token(&mut self, token: &str, now: OffsetDateTime) -> Expected;
    /// A store's charge of `cost`.
    fn charge(&mut self, cost: u32, now: OffsetDateTime) -> Result<Allowance, Refusal>;
    fn housekeep(&mut self, now: OffsetDateTime) -> bool;
    /// Revokes a leaked token: which one it was, or the refusal.
    fn revoke(&mut self, token: &str, now: OffsetDateTime) -> Result<TokenMatch, VerifyError>;
    fn reload(&mut self);
    fn key(&self) -> ApiKey;
}

/// Which token a `TokenRevoked` event revoked.
fn revoked(event: &keyroll::Event) -> TokenMatch {
    match event {
        keyroll::Event::TokenRevoked { which, .. } => *which,
        other => panic!("expected TokenRevoked, got {other:?}"),
    }
}

/// (a) the state machine itself, reloaded through JSON on `Reload`, and
/// the meter a store would keep beside it.
struct Plain(ApiKey, Option<StoredMeter>);

impl Subject for Plain {
    fn start(id: KeyId, now: OffsetDateTime, rng: &mut StdRng) -> (Self, Token) {
        let (key, token, _) = ApiKey::issue(NewKey::new(id), now, rng).unwrap();
        (Plain(key, None), token)
    }
    fn renew(
        &mut self,
        deletion: Option<OldTokenDeletion>,
        now: OffsetDateTime,
        rng: &mut StdRng,
    ) -> Result<Token, TransitionError> {
        match deletion {
            None => self.0.renew(now, rng),
            Some(deletion) => self.0.renew_with(deletion, now, rng),
        }
        .map(|(token, _)| token)
    }
    fn transition(&mut self, op: &Op, now: OffsetDateTime) -> Result<(), TransitionError> {
        let key = &mut self.0;
        match op {
            Op::Finalize(deletion) => key.finalize(*deletion, now),
            Op::DeleteOld => key.delete_old(now),
            Op::Undo => key.undo_renewal(now),
            Op::Apply(change) => key.apply(change.clone(), now),
            Op::ApplyAll(changes) => {
                return key.apply_all(changes.clone(), now).map(|events| {
                    assert_eq!(events.last().map(|e| e.version()), Some(key.version()));
                });
            }
            other => unreachable!("{other:?} is not a plain transition"),
        }
        .map(|event| assert_eq!(event.version(), key.version()))
    }
    fn verify(&self, token: &str, now: OffsetDateTime) -> Result<TokenMatch, VerifyError> {
        self.0.verify(token, now)
    }
    fn use_token(&mut self, token: &str, now: OffsetDateTime) -> Expected {
        let matched = match self.0.verify(token, now) {
            Ok(matched) => matched,
            Err(e) => return Expected::Verified(Err(e)),
        };
        // The manager's check of the request's address, after the token.
        if self.0.networks().is_some_and(|n| !n.contains(CLIENT_IP)) {
            return Expected::Verified(Err(VerifyError::NetworkNotAllowed));
        }
        if self.0.is_metered()
            && let Err(refusal) = self.charge(1, now)
        {
            return Expected::Limited(refusal);
        }
        Expected::Used(matched, self.0.record_use(matched, now))
    }
    fn charge(&mut self, cost: u32, now: OffsetDateTime) -> Result<Allowance, Refusal> {
        let (meter, allowance) = self.0.charge(self.1.as_ref(), cost, now)?;
        self.1 = Some(meter);
        Ok(allowance)
    }
    fn housekeep(&mut self, now: OffsetDateTime) -> bool {
        self.0.housekeep(now).is_some()
    }
    fn revoke(&mut self, token: &str, now: OffsetDateTime) -> Result<TokenMatch, VerifyError> {
        let event = self.0.revoke_token(token, now)?;
        assert_eq!(event.version(), self.0.version());
        Ok(revoked(&event))
    }
    fn reload(&mut self) {
        let json = serde_json::to_string(&self.0).unwrap();
        let back: ApiKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back, self.0);
        self.0 = back;
    }
    fn key(&self) -> ApiKey {
        self.0.clone()
    }
}

/// (b) the manager over a store; uses go through a second manager that
/// records them.
struct Managed {
    id: KeyId,
    store: Arc<InMemoryStore>,
    plain: KeyManager<Arc<InMemoryStore>>,
    recording: KeyManager<Arc<InMemoryStore>>,
}

fn refusal(e: ManagerError<std::convert::Infallible>) -> TransitionError {
    match e {
        ManagerError::Transition(e) => e,
        other => panic!("the manager failed: {other}"),
    }
}

impl Subject for Managed {
    fn start(id: KeyId, now: OffsetDateTime, rng: &mut StdRng) -> (Self, Token) {
        let store = Arc::new(InMemoryStore::new());
        let plain = KeyManager::new(store.clone());
        let recording = KeyManager::new(store.clone()).with_usage_recording(true);
        let (token, _) = block_on(plain.create_key(NewKey::new(id.clone()), now, rng)).unwrap();
        (
            Managed {
                id,
                store,
                plain,
                recording,
            },
            token,
        )
    }
    fn renew(
        &mut self,
        deletion: Option<OldTokenDeletion>,
        now: OffsetDateTime,
        rng: &mut StdRng,
    ) -> Result<Token, TransitionError> {
        match deletion {
            None => block_on(self.plain.renew(&self.id, now, rng)),
            Some(deletion) => block_on(self.plain.renew_with(&self.id, deletion, now, rng)),
        }
        .map(|(token, _)| token)
        .map_err(refusal)
    }
    fn transition(&mut self, op: &Op, now: OffsetDateTime) -> Result<(), TransitionError> {
        let (m, id) = (&self.plain, &self.id);
        match op {
            Op::Finalize(deletion) => block_on(m.finalize(id, *deletion, now)),
            Op::DeleteOld => block_on(m.delete_old(id, now)),
            Op::Undo => block_on(m.undo_renewal(id, now)),
            Op::Apply(change) => block_on(m.apply(id, change.clone(), now)),
            Op::ApplyAll(changes) => {
                return block_on(m.apply_all(id, changes.clone(), now))
                    .map(|_| ())
                    .map_err(refusal);
            }
            other => unreachable!("{other:?} is not a plain transition"),
        }
        .map(|_| ())
        .map_err(refusal)
    }
    /// The store's verification: authentication would also charge.
    fn verify(&self, token: &str, now: OffsetDateTime) -> Result<TokenMatch, VerifyError> {
        let presented = keyroll::PresentedToken::parse(token)?;
        match block_on(self.store.verify(&self.id, &presented, now)).unwrap() {
            Verification::Accepted(who) => Ok(who.matched),
            Verification::Refused { error, .. } => Err(error),
            other => panic!("the key is stored: {other:?}"),
        }
    }
    fn use_token(&mut self, token: &str, now: OffsetDateTime) -> Expected {
        let before = self.key().version();
        let matched = block_on(
            self.recording.authenticate(
                keyroll::Credentials::bearer(token)
                    .with_id(&self.id)
                    .from_ip(CLIENT_IP),
                now,
            ),
        );
        let matched = match matched {
            Ok(who) => who.matched,
            Err(keyroll::AuthError::Verify(e)) => return Expected::Verified(Err(e)),
            Err(e) => match e.refusal() {
                Some(refusal) => return Expected::Limited(refusal),
                None => panic!("authenticate failed: {e}"),
            },
        };
        // Uses are noted in memory; the flush writes them.
        block_on(self.recording.flush_usage(now)).unwrap();
        Expected::Used(matched, self.key().version() != before)
    }
    fn charge(&mut self, cost: u32, now: OffsetDateTime) -> Result<Allowance, Refusal> {
        let incarnation = self.key().revision().incarnation();
        block_on(self.store.charge(&self.id, incarnation, cost, now)).unwrap()
    }
    fn housekeep(&mut self, now: OffsetDateTime) -> bool {
        block_on(self.plain.housekeep(&self.id, now))
            .unwrap()
            .is_some()
    }
    fn revoke(&mut self, token: &str, now: OffsetDateTime) -> Result<TokenMatch, VerifyError> {
        // The manager answers `None` for anything that is not a live token.
        match block_on(self.plain.revoke_token(token, now)).unwrap() {
            Some(event) => Ok(revoked(&event)),
            None => Err(VerifyError::Mismatch),
        }
    }
    fn reload(&mut self) {}
    fn key(&self) -> ApiKey {
        block_on(self.plain.get(&self.id))
            .unwrap()
            .expect("the key is stored")
    }
}

/// The system under test and every token it handed out, by handle.
struct Harness<S> {
    subject: S,
    tokens: Vec<Token>,
    /// A well-formed token of another key.
    stranger: Token,
    rng: StdRng,
}

impl<S: Subject> Harness<S> {
    /// The token the last operation presented.
    fn token(&self, model: &Model) -> &str {
        match model.presented {
            Some(h) => self.tokens[h].expose_secret(),
            None => self.stranger.expose_secret(),
        }
    }
}

struct Against<S>(std::marker::PhantomData<S>);

impl<S: Subject> StateMachineTest for Against<S> {
    type SystemUnderTest = Harness<S>;
    type Reference = Model;

    fn init_test(model: &Model) -> Harness<S> {
        let mut rng = StdRng::seed_from_u64(model.now.unix_timestamp() as u64);
        let (subject, token) = S::start(KeyId::new("model-key").unwrap(), model.now, &mut rng);
        let (_, stranger, _) =
            ApiKey::issue(KeyId::new("model-key").unwrap(), model.now, &mut rng).unwrap();
        Harness {
            subject,
            tokens: vec![token],
            stranger,
            rng,
        }
    }

    /// `model` is the state after `op`.
    fn apply(mut sut: Harness<S>, model: &Model, op: Op) -> Harness<S> {
        let now = model.now;
        let seen = match &op {
            Op::Renew | Op::RenewWith(_) => match sut.subject.renew(
                match &op {
                    Op::RenewWith(deletion) => Some(*deletion),
                    _ => None,
                },
                now,
                &mut sut.rng,
            ) {
                Ok(token) => {
                    sut.tokens.push(token);
                    Expected::Done
                }
                Err(e) => Expected::Refused(e),
            },
            Op::Finalize(_) | Op::DeleteOld | Op::Undo | Op::Apply(_) | Op::ApplyAll(_) => {
                let before = sut.subject.key();
                match sut.subject.transition(&op, now) {
                    Ok(()) => Expected::Done,
                    Err(e) => {
                        assert_eq!(
                            sut.subject.key(),
                            before,
                            "a refused {op:?} changed the key"
                        );
                        Expected::Refused(e)
                    }
                }
            }
            Op::Verify(_) => {
                // `model` is after the op, which changes nothing.
                Expected::Verified(sut.subject.verify(sut.token(model), now))
            }
            Op::Use(_) => {
                let token = sut.token(model).to_owned();
                sut.subject.use_token(&token, now)
            }
            Op::Charge(cost) => {
                let before = sut.subject.key();
                let charged = sut.subject.charge(*cost, now);
                assert_eq!(sut.subject.key(), before, "a charge changed the key");
                Expected::Charged(charged.map(|allowance| Charged::of(&allowance)))
            }
            Op::Housekeep => Expected::Housekept(sut.subject.housekeep(now)),
            Op::Revoke(_) => {
                let token = sut.token(model).to_owned();
                let before = sut.subject.key();
                let result = sut.subject.revoke(&token, now);
                if result.is_err() {
                    assert_eq!(
                        sut.subject.key(),
                        before,
                        "a refused revocation changed the key"
                    );
                }
                Expected::Revoked(result)
            }
            Op::Advance(_) => Expected::Nothing,
            Op::Reload => {
                sut.subject.reload();
                Expected::Nothing
            }
            other => unreachable!("the harness does not know {other:?}"),
        };
        assert_eq!(seen, model.expected, "{op:?}");
        sut
    }

    fn check_invariants(sut: &Harness<S>, model: &Model) {
        let key = sut.subject.key();
        assert_eq!(key.version(), model.version, "version");
        let status = if model.active {
            KeyStatus::Active
        } else {
            KeyStatus::Inactive
        };
        assert_eq!(key.status(), status);
        // Only the set_* calls change these; renewals never extend expiry.
        assert_eq!(key.label(), model.label, "label");
        assert_eq!(key.scopes(), &model.scopes, "scopes");
        assert_eq!(key.metadata(), &model.metadata, "metadata");
        assert_eq!(key.owner(), model.owner.as_ref(), "owner");
        assert_eq!(key.rate_limit(), model.rate_limit.as_ref(), "rate limit");
        assert_eq!(key.credits(), model.credits.as_ref(), "credits");
        assert_eq!(key.expires_at(), model.expires_at, "expiry");
        let sorted = |mut settings: Vec<Change>| {
            settings.sort_by_key(Change::name);
            settings
        };
        assert_eq!(sorted(key.settings()), sorted(model.settings()), "settings");
        match (key.state(), model.old) {
            (RenewalState::Single, None) => {}
            (RenewalState::Renewing { decision }, Some(_)) => assert_eq!(decision, model.decision),
            (state, old) => panic!("state {state:?}, model old token {old:?}"),
        }
        assert_eq!(
            key.current_token().id(),
            sut.tokens[model.current].id(),
            "current token"
        );
        assert_eq!(
            key.old_token().map(|t| t.id()),
            model.old.map(|h| sut.tokens[h].id()),
            "old token"
        );
        // Every token handed out is distinct, and only the current and the
        // live old token verify: at most two; discarded ones never again.
        let ids: HashSet<TokenId> = sut.tokens.iter().map(Token::id).collect();
        assert_eq!(ids.len(), sut.tokens.len(), "a token id repeated");
        for (h, token) in sut.tokens.iter().enumerate() {
            let result = sut.subject.verify(token.expose_secret(), model.now);
            assert_eq!(result, model.verify(Some(h)), "token {h}");
        }
        assert_eq!(
            sut.subject.verify(sut.stranger.expose_secret(), model.now),
            Err(VerifyError::Mismatch)
        );
        // A revoked token never verifies again, whatever followed.
        for &h in &model.revoked {
            assert_eq!(
                sut.subject.verify(sut.tokens[h].expose_secret(), model.now),
                Err(VerifyError::Mismatch),
                "revoked token {h} verified"
            );
        }
        assert_eq!(
            key.current_token().revoked_at().is_some(),
            model.current_revoked,
            "current token revoked"
        );
    }
}

type AgainstKey = Against<Plain>;
type AgainstManager = Against<Managed>;

prop_state_machine! {
    #![proptest_config(Config {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/model.txt"))),
        ..Config::default()
    })]

    #[test]
    fn api_key_follows_the_model(sequential 1..64 => AgainstKey);

    #[test]
    fn key_manager_follows_the_model(sequential 1..64 => AgainstManager);
}

#[test]
fn the_kit_generates_keys_in_every_state() {
    use proptest::strategy::{Strategy, ValueTree};
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen = HashSet::new();
    for _ in 0..500 {
        let key = keyroll::testing::api_key()
            .new_tree(&mut runner)
            .unwrap()
            .current();
        seen.insert(format!("{:?} {:?}", key.state(), key.status()));
        let back: ApiKey = serde_json::from_str(&serde_json::to_string(&key).unwrap()).unwrap();
        assert_eq!(back, key);
    }
    for expected in [
        "Single Active",
        "Single Inactive",
        "Renewing { decision: Undecided } Active",
        "Renewing { decision: Later } Active",
    ] {
        assert!(
            seen.contains(expected),
            "{expected} never generated: {seen:?}"
        );
    }
    assert!(seen.iter().any(|s| s.contains("Scheduled")), "{seen:?}");
    assert!(
        seen.iter().any(|s| s.contains("AfterNewTokenUse")),
        "{seen:?}"
    );
}
