//! A proptest kit for your own property tests (feature `proptest`).
//!
//! - [`Model`]: a plain reference model of the key lifecycle contract,
//!   written from the contract and sharing no logic with [`ApiKey`]. It
//!   implements `proptest-state-machine`'s
//!   [`ReferenceStateMachine`](https://docs.rs/proptest-state-machine/0.9/proptest_state_machine/trait.ReferenceStateMachine.html),
//!   so that crate can
//!   generate sequences of [`Op`]s and run them against your system: your
//!   service, your store, or a wrapper of your own.
//! - Strategies: [`key_id`], [`timestamp`], [`op`] and [`api_key`] (keys in
//!   every state).
//!
//! The model tracks tokens by *handle*: handle 0 is the token of the issue,
//! and each successful renewal hands out the next one. After each
//! transition, [`Model::expected`] says what the system should have answered,
//! and the model's fields say what state it should be in. It assumes the
//! default [`Policy`](crate::Policy) (advisory expiry, a 60-second usage resolution).
//!
//! # Example: testing your own system against the model
//!
//! Here the system is a bare [`ApiKey`]; put your service or store in its
//! place, mapping each [`Op`] to its call.
//!
//! ```
//! use keyroll::meter::{Refusal, StoredMeter};
//! use keyroll::testing::{CLIENT_IP, Charged, Expected, Model, Op};
//! use keyroll::{ApiKey, KeyId, Token, TransitionError, VerifyError};
//! use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
//! use time::OffsetDateTime;
//!
//! /// The system under test: the key, its meter, the tokens it handed out
//! /// (by handle).
//! struct Sut { key: ApiKey, meter: Option<StoredMeter>, tokens: Vec<Token>, stranger: Token }
//!
//! impl Sut {
//!     /// A store's charge: the meter kept if admitted.
//!     fn charge(&mut self, cost: u32, now: OffsetDateTime) -> Result<Charged, Refusal> {
//!         let (meter, allowance) = self.key.charge(self.meter.as_ref(), cost, now)?;
//!         self.meter = Some(meter);
//!         Ok(Charged::of(&allowance))
//!     }
//! }
//!
//! struct MyTest;
//!
//! impl StateMachineTest for MyTest {
//!     type SystemUnderTest = Sut;
//!     type Reference = Model;
//!
//!     fn init_test(model: &Model) -> Sut {
//!         let issue = || ApiKey::issue(KeyId::new("k").unwrap(), model.now, &mut rand::rng()).unwrap();
//!         let ((key, token, _), (_, stranger, _)) = (issue(), issue());
//!         Sut { key, meter: None, tokens: vec![token], stranger }
//!     }
//!
//!     /// `model` is the state after `op`; `model.expected` what `op` should answer.
//!     fn apply(mut sut: Sut, model: &Model, op: Op) -> Sut {
//!         let now = model.now;
//!         let token = |sut: &Sut| match model.presented {
//!             Some(handle) => sut.tokens[handle].expose_secret().to_owned(),
//!             None => sut.stranger.expose_secret().to_owned(),
//!         };
//!         fn done<T>(r: Result<T, TransitionError>) -> Expected {
//!             r.map_or_else(Expected::Refused, |_| Expected::Done)
//!         }
//!         let seen = match op.clone() {
//!             Op::Renew | Op::RenewWith(_) => {
//!                 let renewed = match &op {
//!                     Op::RenewWith(deletion) => sut.key.renew_with(*deletion, now, &mut rand::rng()),
//!                     _ => sut.key.renew(now, &mut rand::rng()),
//!                 };
//!                 match renewed {
//!                     Ok((new, _)) => { sut.tokens.push(new); Expected::Done }
//!                     Err(e) => Expected::Refused(e),
//!                 }
//!             }
//!             Op::Finalize(deletion) => done(sut.key.finalize(deletion, now)),
//!             Op::DeleteOld => done(sut.key.delete_old(now)),
//!             Op::Undo => done(sut.key.undo_renewal(now)),
//!             Op::Apply(change) => done(sut.key.apply(change, now)),
//!             Op::ApplyAll(changes) => done(sut.key.apply_all(changes, now)),
//!             Op::Charge(cost) => Expected::Charged(sut.charge(cost, now)),
//!             Op::Verify(_) => Expected::Verified(sut.key.verify(&token(&sut), now)),
//!             Op::Use(_) => match sut.key.verify(&token(&sut), now) {
//!                 // Each use comes from `CLIENT_IP`: the manager checks it after the token.
//!                 Ok(_) if sut.key.networks().is_some_and(|n| !n.contains(CLIENT_IP)) => {
//!                     Expected::Verified(Err(VerifyError::NetworkNotAllowed))
//!                 }
//!                 Ok(matched) => match sut.charge(1, now) {
//!                     Ok(_) => Expected::Used(matched, sut.key.record_use(matched, now)),
//!                     Err(refusal) => Expected::Limited(refusal),
//!                 },
//!                 Err(e) => Expected::Verified(Err(e)),
//!             },
//!             Op::Housekeep => Expected::Housekept(sut.key.housekeep(now).is_some()),
//!             Op::Revoke(_) => Expected::Revoked(
//!                 sut.key.revoke_token(&token(&sut), now).map(|event| match event {
//!                     keyroll::Event::TokenRevoked { which, .. } => which,
//!                     other => unreachable!("{other:?}"),
//!                 }),
//!             ),
//!             Op::Advance(_) | Op::Reload => Expected::Nothing,
//!             _ => unreachable!("every Op is handled above"),
//!         };
//!         assert_eq!(seen, model.expected, "{op:?}");
//!         assert_eq!(sut.key.version(), model.version);
//!         assert_eq!(sut.key.current_token().id(), sut.tokens[model.current].id());
//!         sut
//!     }
//! }
//!
//! prop_state_machine! {
//!     // In a test file, put `#[test]` here.
//!     fn my_system_follows_the_model(sequential 1..32 => MyTest);
//! }
//! # fn main() { my_system_follows_the_model(); }
//! ```
//!
//! To test only the operations your system supports, filter them in your own
//! `ReferenceStateMachine` that delegates to `Model`.

use ipnet::IpNet;
use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use proptest_state_machine::ReferenceStateMachine;
use time::{Duration, OffsetDateTime};

use crate::meter::{Allowance, Credits, RateLimit, Refill, Refusal, Subject};
use crate::{
    ApiKey, Change, Decision, KeyId, Metadata, Networks, NewKey, OldTokenDeletion, OwnerId, Scopes,
    TokenMatch, TransitionError, VerifyError,
};

/// Which token an [`Op::Verify`], [`Op::Use`] or [`Op::Revoke`] presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Which {
    /// The current token.
    Current,
    /// The old token (only generated while there is one).
    Old,
    /// The most recently deleted or discarded token (only generated once
    /// there is one).
    Discarded,
    /// A well-formed token that was never issued for this key.
    Random,
}

/// One operation on a key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// [`ApiKey::renew`].
    Renew,
    /// [`ApiKey::renew_with`] with this mode.
    RenewWith(OldTokenDeletion),
    /// [`ApiKey::finalize`] with this mode.
    Finalize(OldTokenDeletion),
    /// [`ApiKey::delete_old`].
    DeleteOld,
    /// [`ApiKey::undo_renewal`].
    Undo,
    /// [`ApiKey::apply`] of one change of a setting or the status.
    Apply(Change),
    /// [`ApiKey::apply_all`] (the manager's `apply_all`): several changes
    /// in one write, all or none.
    ApplyAll(Vec<Change>),
    /// [`ApiKey::verify`] of a token.
    Verify(Which),
    /// An authentication, as the manager's: [`ApiKey::verify`] of a
    /// token; if it matched and the key has limits, [`ApiKey::charge`] of
    /// cost 1; if that admitted it, [`ApiKey::record_use`].
    Use(Which),
    /// [`ApiKey::housekeep`].
    Housekeep,
    /// [`ApiKey::revoke_token`] of a token.
    Revoke(Which),
    /// [`ApiKey::charge`] of this cost, on the meter of the key's earlier
    /// charges (a store's [`charge`](crate::store::KeyStore::charge)).
    Charge(u32),
    /// Moves the clock forward (the system under test reads the model's
    /// `now`).
    Advance(Duration),
    /// Serializes the key and loads it back (or, for a store, reloads it).
    Reload,
}

/// What the system should have answered to the last [`Op`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expected {
    /// Nothing to check (the initial state, `Advance`, `Reload`).
    Nothing,
    /// The transition succeeded.
    Done,
    /// The transition was refused with this error, changing nothing.
    Refused(TransitionError),
    /// `verify` answered this.
    Verified(Result<TokenMatch, VerifyError>),
    /// `verify` answered `Ok`, then `record_use` returned this.
    Used(TokenMatch, bool),
    /// `housekeep` returned an event (`true`) or nothing.
    Housekept(bool),
    /// `revoke_token` revoked this token (`Ok`), or refused.
    Revoked(Result<TokenMatch, VerifyError>),
    /// A charge admitted (what the limits allow after it) or refused.
    Charged(Result<Charged, Refusal>),
    /// An [`Op::Use`] whose token matched, refused by the key's limits.
    Limited(Refusal),
}

/// What an admitted charge leaves, as [`Allowance`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Charged {
    /// [`Allowance::rate_remaining`].
    pub rate_remaining: Option<u32>,
    /// [`Allowance::rate_reset`].
    pub rate_reset: Option<Duration>,
    /// [`Allowance::credits_remaining`].
    pub credits_remaining: Option<u64>,
    /// [`Allowance::next_refill`].
    pub next_refill: Option<OffsetDateTime>,
}

impl Charged {
    /// What `allowance` tells.
    pub fn of(allowance: &Allowance) -> Charged {
        Charged {
            rate_remaining: allowance.rate_remaining(),
            rate_reset: allowance.rate_reset(),
            credits_remaining: allowance.credits_remaining(),
            next_refill: allowance.next_refill(),
        }
    }
}

/// The reference model of one key: its state as the contract describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// The clock.
    pub now: OffsetDateTime,
    /// The key's version.
    pub version: u64,
    /// Whether the key is active.
    pub active: bool,
    /// The handle of the current token.
    pub current: usize,
    /// The handle of the old token, while renewing.
    pub old: Option<usize>,
    /// The decision about the old token (meaningful while renewing).
    pub decision: Decision,
    /// Handles of deleted or discarded tokens, oldest first.
    pub gone: Vec<usize>,
    /// Whether the current token was revoked (it then never verifies, and
    /// a renewal replaces it outright).
    pub current_revoked: bool,
    /// Handles of every token revoked so far: none of them may ever verify
    /// again.
    pub revoked: Vec<usize>,
    /// The handle the last [`Op::Verify`], [`Op::Use`] or [`Op::Revoke`]
    /// presented (`None`: a token never issued). A revocation can delete the
    /// token it names, so this, not [`handle`](Model::handle) of the state
    /// after it, says which token it was.
    pub presented: Option<usize>,
    /// The key's label.
    pub label: String,
    /// The key's scopes.
    pub scopes: Scopes,
    /// The key's metadata.
    pub metadata: Metadata,
    /// The key's hard expiry.
    pub expires_at: Option<OffsetDateTime>,
    /// The last recorded use of each handle.
    pub last_used: Vec<Option<OffsetDateTime>>,
    /// The key's owner.
    pub owner: Option<OwnerId>,
    /// The key's rate limit.
    pub rate_limit: Option<RateLimit>,
    /// The key's credits as last set.
    pub credits: Option<Credits>,
    /// The settings it keeps only as data (networks, ...) that are set,
    /// as the changes that set them.
    pub kept: Vec<Change>,
    /// The rate limit's bucket, as a leaky bucket: how long it takes to
    /// drain, as of [`drained_from`](Model::drained_from). A request of
    /// cost `c` pours in `c·T`; it fits while the level stays within
    /// `burst·T`.
    pub level: Duration,
    /// The instant [`level`](Model::level) was measured; it drains one
    /// second a second since.
    pub drained_from: OffsetDateTime,
    /// The credits left (as of the last charge or setting).
    pub credits_left: u64,
    /// When the credits were last set: refills come every `every` after.
    pub credits_since: OffsetDateTime,
    /// How many refills have been applied since the credits were set.
    pub refills: u64,
    /// What the system should have answered to the last operation.
    pub expected: Expected,
}

/// The usage resolution of the default policy.
const RESOLUTION: Duration = Duration::seconds(60);

impl Model {
    /// A key just issued at `now`: version 1, active, one token (handle 0),
    /// no label, scopes, metadata or expiry.
    pub fn new(now: OffsetDateTime) -> Model {
        Model {
            label: String::new(),
            scopes: Scopes::default(),
            metadata: Metadata::default(),
            expires_at: None,
            now,
            version: 1,
            active: true,
            current: 0,
            old: None,
            decision: Decision::Undecided,
            gone: Vec::new(),
            current_revoked: false,
            revoked: Vec::new(),
            presented: None,
            last_used: vec![None],
            owner: None,
            rate_limit: None,
            credits: None,
            kept: Vec::new(),
            level: Duration::ZERO,
            drained_from: now,
            credits_left: 0,
            credits_since: now,
            refills: 0,
            expected: Expected::Nothing,
        }
    }

    /// The bucket's level at `now`.
    fn level_now(&self) -> Duration {
        (self.level - (self.now - self.drained_from)).max(Duration::ZERO)
    }

    /// How many refills are due by `now`.
    fn refills_due(&self, refill: &Refill) -> u64 {
        let since = (self.now - self.credits_since).whole_nanoseconds();
        u64::try_from(since / refill.every().whole_nanoseconds()).unwrap_or(0)
    }

    /// The first refill still to come that covers `cost`.
    fn refill_for(&self, cost: u32) -> Option<OffsetDateTime> {
        let refill = self.credits?.refill().copied()?;
        if refill.amount() < u64::from(cost) {
            return None;
        }
        let next = self.refills.max(self.refills_due(&refill)) + 1;
        let at = self.credits_since.unix_timestamp_nanos()
            + i128::from(next) * refill.every().whole_nanoseconds();
        OffsetDateTime::from_unix_timestamp_nanos(at).ok()
    }

    /// Charges `cost` at `now`: both limits, or neither.
    fn charge(&mut self, cost: u32) -> Result<Charged, Refusal> {
        if self.rate_limit.is_none() && self.credits.is_none() {
            return Ok(Charged::default());
        }
        let max = self.rate_limit.map_or(u32::MAX, |r| r.burst());
        if cost == 0 || cost > max {
            return Err(Refusal::CostOutOfRange { cost, max });
        }
        // The credits, refilled (set, not added to) if a refill came.
        let (mut left, mut refills) = (self.credits_left, self.refills);
        if let Some(refill) = self.credits.and_then(|c| c.refill().copied()) {
            let due = self.refills_due(&refill);
            if due > refills {
                (left, refills) = (refill.amount(), due);
            }
        }
        // What a refusal reports: the credits refilled, nothing charged.
        let refused = self.allowance(self.level_now(), left);
        if self.credits.is_some() && u64::from(cost) > left {
            return Err(Refusal::UsageExceeded {
                refill_at: self.refill_for(cost),
                subject: Subject::Key,
                allowance: Box::new(refused),
            });
        }
        let level = match self.rate_limit {
            Some(rate) => {
                let level = self.level_now() + rate.interval() * cost;
                if level > rate.window() {
                    return Err(Refusal::RateLimited {
                        retry_after: level - rate.window(),
                        limit: rate,
                        subject: Subject::Key,
                        allowance: Box::new(refused),
                    });
                }
                level
            }
            None => self.level_now(),
        };
        if self.rate_limit.is_some() {
            (self.level, self.drained_from) = (level, self.now);
        }
        if self.credits.is_some() {
            (self.credits_left, self.refills) = (left - u64::from(cost), refills);
        }
        Ok(Charged::of(&self.allowance(level, self.credits_left)))
    }

    /// The allowance of a bucket at `level` and `left` credits.
    fn allowance(&self, level: Duration, left: u64) -> Allowance {
        Allowance::of(
            self.rate_limit.map(|rate| {
                let room = (rate.window() - level).whole_nanoseconds().max(0);
                let room = room / rate.interval().whole_nanoseconds();
                (rate, u32::try_from(room).unwrap_or(u32::MAX), level)
            }),
            self.credits
                .map(|credits| (credits, left, self.refill_for(1))),
        )
    }

    /// The number of tokens handed out so far (handles `0..issued()`).
    pub fn issued(&self) -> usize {
        self.last_used.len()
    }

    /// The old token, unless there is none or its scheduled deletion is due.
    pub fn live_old(&self) -> Option<usize> {
        match self.decision {
            Decision::Scheduled { at } if at <= self.now => None,
            _ => self.old,
        }
    }

    /// The handle [`Op::Verify`] or [`Op::Use`] presents (`None`: a token
    /// never issued).
    pub fn handle(&self, which: Which) -> Option<usize> {
        match which {
            Which::Current => Some(self.current),
            Which::Old => self.old,
            Which::Discarded => self.gone.last().copied(),
            Which::Random => None,
        }
    }

    /// What `verify` answers for the token with this handle.
    pub fn verify(&self, handle: Option<usize>) -> Result<TokenMatch, VerifyError> {
        let matched = match handle {
            Some(h) if h == self.current && !self.current_revoked => TokenMatch::Current,
            Some(h) if Some(h) == self.live_old() => TokenMatch::Old,
            _ => return Err(VerifyError::Mismatch),
        };
        if !self.active {
            Err(VerifyError::KeyInactive)
        } else if self.expired() {
            Err(VerifyError::KeyExpired)
        } else {
            Ok(matched)
        }
    }

    /// Which live token `handle` is, whatever the key's status.
    fn verify_ignoring_status(&self, handle: Option<usize>) -> Option<TokenMatch> {
        match handle {
            Some(h) if h == self.current && !self.current_revoked => Some(TokenMatch::Current),
            Some(h) if Some(h) == self.live_old() => Some(TokenMatch::Old),
            _ => None,
        }
    }

    /// Whether the key is past its hard expiry.
    pub fn expired(&self) -> bool {
        self.expires_at.is_some_and(|at| self.now >= at)
    }

    fn succeed(&mut self) {
        self.version += 1;
        self.expected = Expected::Done;
    }

    fn delete_old(&mut self) {
        if let Some(old) = self.old.take() {
            self.gone.push(old);
        }
    }

    /// Decides the fate of the old token, as `finalize` does.
    fn decide(&mut self, deletion: OldTokenDeletion) {
        match deletion {
            OldTokenDeletion::Later => self.decision = Decision::Later,
            OldTokenDeletion::At(at) if at > self.now => self.decision = Decision::Scheduled { at },
            OldTokenDeletion::AfterNewTokenUse { grace } => {
                self.decision = Decision::AfterNewTokenUse { grace }
            }
            _ => self.delete_old(),
        }
    }

    /// Makes `changes` on a copy, each bumping the version; keeps the copy
    /// only if every one succeeds.
    fn apply_all(&mut self, changes: &[Change]) {
        let mut next = self.clone();
        for change in changes {
            if let Err(e) = next.change(change) {
                self.expected = Expected::Refused(e);
                return;
            }
            next.version += 1;
        }
        *self = next;
        self.expected = Expected::Done;
    }

    /// One change, as the contract says (the version aside).
    fn change(&mut self, change: &Change) -> Result<(), TransitionError> {
        match change {
            Change::Activate if self.active => return Err(TransitionError::AlreadyActive),
            Change::Deactivate if !self.active => return Err(TransitionError::AlreadyInactive),
            Change::Activate | Change::Deactivate => self.active = !self.active,
            Change::Label(label) => self.label = label.clone(),
            Change::Scopes(scopes) => self.scopes = scopes.clone(),
            Change::Metadata(metadata) => self.metadata = metadata.clone(),
            Change::Expiry(expires_at) => self.expires_at = *expires_at,
            Change::Owner(owner) => self.owner = owner.clone(),
            // The bucket keeps its level.
            Change::RateLimit(rate) => self.rate_limit = *rate,
            Change::Credits(credits) => {
                self.credits = *credits;
                self.credits_left = credits.map_or(0, |c| c.remaining());
                self.credits_since = self.now;
                self.refills = 0;
            }
            // Any other setting is only kept.
            setting => {
                self.kept.retain(|kept| kept.name() != setting.name());
                if !setting.removes() {
                    self.kept.push(setting.clone());
                }
            }
        }
        Ok(())
    }

    /// Whether the key's networks, if it has any, hold [`CLIENT_IP`], which
    /// every [`Op::Use`] comes from.
    fn admits_client(&self) -> Result<(), VerifyError> {
        let outside = self.kept.iter().any(|kept| {
            matches!(kept, Change::Networks(Some(networks)) if !networks.contains(CLIENT_IP))
        });
        if outside {
            Err(VerifyError::NetworkNotAllowed)
        } else {
            Ok(())
        }
    }

    /// Every setting the key has, as [`ApiKey::settings`](crate::ApiKey::settings)
    /// lists them (up to order).
    pub fn settings(&self) -> Vec<Change> {
        let mut settings = Vec::new();
        if !self.label.is_empty() {
            settings.push(Change::Label(self.label.clone()));
        }
        if !self.scopes.is_empty() {
            settings.push(Change::Scopes(self.scopes.clone()));
        }
        if !self.metadata.is_empty() {
            settings.push(Change::Metadata(self.metadata.clone()));
        }
        let optional = [
            self.expires_at.map(|at| Change::Expiry(Some(at))),
            self.owner.clone().map(|owner| Change::Owner(Some(owner))),
            self.rate_limit.map(|rate| Change::RateLimit(Some(rate))),
            self.credits.map(|credits| Change::Credits(Some(credits))),
        ];
        settings.extend(optional.into_iter().flatten());
        settings.extend(self.kept.iter().cloned());
        settings
    }

    /// Applies one operation, setting [`expected`](Model::expected).
    pub fn step(&mut self, op: &Op) {
        let refuse = |m: &mut Model, e| m.expected = Expected::Refused(e);
        match op {
            Op::RenewWith(OldTokenDeletion::AfterNewTokenUse { grace }) if grace.is_negative() => {
                refuse(self, TransitionError::InvalidGrace { grace: *grace })
            }
            Op::Renew | Op::RenewWith(_) if self.expired() => {
                let expires_at = self.expires_at.unwrap_or(self.now);
                refuse(self, TransitionError::KeyExpired { expires_at })
            }
            Op::Renew | Op::RenewWith(_) if self.live_old().is_some() => {
                refuse(self, TransitionError::RenewalPending)
            }
            Op::Renew | Op::RenewWith(_) => {
                // An old token past its scheduled deletion blocks nothing:
                // it is deleted first, in the same transition.
                self.delete_old();
                let issued = self.issued();
                let previous = std::mem::replace(&mut self.current, issued);
                self.last_used.push(None);
                if std::mem::take(&mut self.current_revoked) {
                    // The revoked token is replaced outright: no old token.
                    self.gone.push(previous);
                } else {
                    self.old = Some(previous);
                    self.decision = Decision::Undecided;
                    if let Op::RenewWith(deletion) = op {
                        self.decide(*deletion);
                    }
                }
                self.succeed();
            }
            Op::Finalize(_) if self.old.is_none() => {
                refuse(self, TransitionError::NoRenewalPending)
            }
            Op::Finalize(_) if self.decision != Decision::Undecided => {
                refuse(self, TransitionError::AlreadyFinalized)
            }
            Op::Finalize(deletion) => {
                self.decide(*deletion);
                self.succeed();
            }
            Op::DeleteOld if self.old.is_none() => refuse(self, TransitionError::NoOldToken),
            Op::DeleteOld => {
                self.delete_old();
                self.succeed();
            }
            Op::Undo => match self.live_old() {
                None => refuse(self, TransitionError::NoOldToken),
                Some(old) => {
                    self.gone.push(self.current);
                    self.current = old;
                    self.current_revoked = false;
                    self.old = None;
                    self.succeed();
                }
            },
            Op::Apply(change) => self.apply_all(std::slice::from_ref(change)),
            Op::ApplyAll(changes) => self.apply_all(changes),
            Op::Charge(cost) => self.expected = Expected::Charged(self.charge(*cost)),
            Op::Verify(which) => {
                self.presented = self.handle(*which);
                self.expected = Expected::Verified(self.verify(self.presented))
            }
            Op::Use(which) => {
                let handle = self.handle(*which);
                self.presented = handle;
                // A request from outside the key's networks is charged nothing.
                let verified = self
                    .verify(handle)
                    .and_then(|matched| self.admits_client().map(|()| matched))
                    .map(|matched| (matched, self.charge(1)));
                self.expected = match (handle, verified) {
                    (_, Ok((_, Err(refusal)))) => Expected::Limited(refusal),
                    (Some(h), Ok((matched, Ok(_)))) => {
                        let stale = self.last_used[h].is_none_or(|t| self.now >= t + RESOLUTION);
                        let schedule = match (matched, self.decision) {
                            (TokenMatch::Current, Decision::AfterNewTokenUse { grace })
                                if self.old.is_some() =>
                            {
                                Some(self.now + grace)
                            }
                            _ => None,
                        };
                        if stale || schedule.is_some() {
                            self.last_used[h] = Some(self.now);
                            if let Some(at) = schedule {
                                self.decision = Decision::Scheduled { at };
                            }
                            self.version += 1;
                        }
                        Expected::Used(matched, stale || schedule.is_some())
                    }
                    (_, result) => Expected::Verified(result.map(|(matched, _)| matched)),
                };
            }
            Op::Housekeep => {
                let due = self.old.is_some() && self.live_old().is_none();
                if due {
                    self.delete_old();
                    self.version += 1;
                }
                self.expected = Expected::Housekept(due);
            }
            Op::Revoke(which) => {
                let handle = self.handle(*which);
                self.presented = handle;
                self.expected = Expected::Revoked(match self.verify_ignoring_status(handle) {
                    Some(TokenMatch::Current) => {
                        self.current_revoked = true;
                        self.revoked.push(self.current);
                        self.version += 1;
                        Ok(TokenMatch::Current)
                    }
                    Some(TokenMatch::Old) => {
                        self.revoked.extend(self.old);
                        self.delete_old();
                        self.version += 1;
                        Ok(TokenMatch::Old)
                    }
                    None => Err(VerifyError::Mismatch),
                });
            }
            Op::Advance(by) => {
                self.now += *by;
                self.expected = Expected::Nothing;
            }
            Op::Reload => self.expected = Expected::Nothing,
        }
    }
}

impl ReferenceStateMachine for Model {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        timestamp().prop_map(Model::new).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        op_at(state.now, state.old.is_some(), !state.gone.is_empty())
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        state.step(op);
        state
    }

    fn preconditions(state: &Model, op: &Op) -> bool {
        match op {
            Op::Verify(Which::Old) | Op::Use(Which::Old) => state.old.is_some(),
            Op::Verify(Which::Discarded) | Op::Use(Which::Discarded) => !state.gone.is_empty(),
            _ => true,
        }
    }
}

/// Key ids: 1 to 64 characters of `[A-Za-z0-9._-]`, the first a letter or
/// digit.
pub fn key_id() -> impl Strategy<Value = KeyId> {
    "[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
        .prop_map(|id| KeyId::new(id).unwrap_or_else(|e| unreachable!("{e}")))
}

/// Owner ids from a small pool (so that keys share owners).
pub fn owner_id() -> impl Strategy<Value = OwnerId> {
    proptest::sample::select(vec!["acme", "globex", "initech", "umbrella.eu"])
        .prop_map(|id| OwnerId::new(id).unwrap_or_else(|e| unreachable!("{e}")))
}

/// The address every [`Op::Use`] comes from
/// ([`Credentials::from_ip`](crate::Credentials::from_ip)).
pub const CLIENT_IP: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

/// Networks of 1 to 4 entries, IPv4 and IPv6, of any prefix length (so
/// that they overlap, and normalising them merges some); half of them hold
/// [`CLIENT_IP`].
pub fn networks() -> impl Strategy<Value = Networks> {
    let v4 = (any::<[u8; 4]>(), 0u8..=32)
        .prop_map(|(addr, prefix)| IpNet::new(std::net::Ipv4Addr::from(addr).into(), prefix));
    let v6 = (any::<[u8; 16]>(), 0u8..=128)
        .prop_map(|(addr, prefix)| IpNet::new(std::net::Ipv6Addr::from(addr).into(), prefix));
    let client = IpNet::new(CLIENT_IP, 24);
    (
        proptest::collection::vec(prop_oneof![v4, v6], 1..=4),
        any::<bool>(),
    )
        .prop_map(move |(mut nets, with_client)| {
            if with_client {
                nets.push(client.clone());
            }
            let nets = nets
                .into_iter()
                .map(|net| net.unwrap_or_else(|e| unreachable!("{e}")));
            Networks::new(nets).unwrap_or_else(|e| unreachable!("{e}"))
        })
}

/// Instants between 2000 and 2100, with nanoseconds.
pub fn timestamp() -> impl Strategy<Value = OffsetDateTime> {
    (946_684_800i64..4_102_444_800, 0u32..1_000_000_000).prop_map(|(secs, nanos)| {
        OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
            + Duration::nanoseconds(i64::from(nanos))
    })
}

/// Operations, with deletion instants, graces and clock steps of seconds to
/// days (instants for `Finalize(At(..))` around 2030; see also
/// [`Model`]'s `ReferenceStateMachine::transitions`, which places them
/// around the model's clock).
pub fn op() -> impl Strategy<Value = Op> {
    op_at(op_now(), true, true)
}

/// Sets of up to 4 scopes from a small pool (so that sets repeat).
pub fn scopes() -> impl Strategy<Value = Scopes> {
    proptest::sample::subsequence(
        vec!["orders:read", "orders:write", "keyroll:admin", "a/b.c-d_e"],
        0..=4,
    )
    .prop_map(|chosen| Scopes::new(chosen).unwrap_or_else(|e| unreachable!("{e}")))
}

/// Metadata of up to 3 entries, with values of any UTF-8.
pub fn metadata() -> impl Strategy<Value = Metadata> {
    proptest::collection::btree_map("[a-z][a-z0-9._-]{0,8}", ".{0,24}", 0..=3)
        .prop_map(|entries| Metadata::new(entries).unwrap_or_else(|e| unreachable!("{e}")))
}

/// Spans of an hour back to two hours ahead.
fn span() -> impl Strategy<Value = Duration> {
    (-3_600i64..7_200).prop_map(Duration::seconds)
}

fn op_at(now: OffsetDateTime, renewing: bool, any_gone: bool) -> BoxedStrategy<Op> {
    let deletion = prop_oneof![
        Just(OldTokenDeletion::Now),
        Just(OldTokenDeletion::Later),
        span().prop_map(move |d| OldTokenDeletion::At(now + d)),
        (0i64..7_200).prop_map(|s| OldTokenDeletion::AfterNewTokenUse {
            grace: Duration::seconds(s)
        }),
    ];
    let mut which = vec![Just(Which::Current).boxed(), Just(Which::Random).boxed()];
    if renewing {
        which.push(Just(Which::Old).boxed());
    }
    if any_gone {
        which.push(Just(Which::Discarded).boxed());
    }
    let which = proptest::strategy::Union::new(which);
    prop_oneof![
        3 => Just(Op::Renew),
        2 => deletion.clone().prop_map(Op::RenewWith),
        3 => deletion.prop_map(Op::Finalize),
        2 => Just(Op::DeleteOld),
        2 => Just(Op::Undo),
        3 => which.clone().prop_map(Op::Verify),
        3 => which.clone().prop_map(Op::Use),
        1 => which.prop_map(Op::Revoke),
        1 => Just(Op::Housekeep),
        3 => prop_oneof![(0i64..120).prop_map(Duration::seconds), (0i64..4).prop_map(Duration::hours)]
            .prop_map(Op::Advance),
        1 => Just(Op::Reload),
        8 => change(now).prop_map(Op::Apply),
        2 => proptest::collection::vec(change(now), 1..=3).prop_map(Op::ApplyAll),
        3 => (0u32..5).prop_map(Op::Charge),
    ]
    .boxed()
}

/// A change of a setting or the status, as [`Op::Apply`] makes: any
/// setting, an expiry around `now`, activation or deactivation.
pub fn change(now: OffsetDateTime) -> impl Strategy<Value = Change> {
    prop_oneof![
        1 => Just(Change::Activate),
        1 => Just(Change::Deactivate),
        1 => "\\PC{0,16}".prop_map(Change::Label),
        1 => scopes().prop_map(Change::Scopes),
        1 => metadata().prop_map(Change::Metadata),
        1 => proptest::option::of(span().prop_map(move |d| now + d)).prop_map(Change::Expiry),
        1 => proptest::option::of(owner_id()).prop_map(Change::Owner),
        1 => proptest::option::of(rate_limit()).prop_map(Change::RateLimit),
        1 => proptest::option::of(credits()).prop_map(Change::Credits),
        1 => proptest::option::of(networks()).prop_map(Change::Networks),
    ]
}

/// Rate limits of 1 to 4 a period of 1 to 120 seconds, in bursts of 1 to 4
/// (small, so that a sequence of operations meets them).
pub fn rate_limit() -> impl Strategy<Value = RateLimit> {
    (1u32..=4, 1i64..=120, 1u32..=4).prop_map(|(limit, period, burst)| {
        RateLimit::new(limit, Duration::seconds(period))
            .and_then(|r| r.with_burst(burst))
            .unwrap_or_else(|e| unreachable!("{e}"))
    })
}

/// Credits of 0 to 5, refilled or not, to 0 to 5 every 1 to 30 minutes.
pub fn credits() -> impl Strategy<Value = Credits> {
    (
        0u64..=5,
        proptest::option::of((0u64..=5, 1i64..=30).prop_map(|(amount, minutes)| {
            Refill::new(amount, Duration::minutes(minutes)).unwrap_or_else(|e| unreachable!("{e}"))
        })),
    )
        .prop_map(|(remaining, refill)| {
            let credits = Credits::new(remaining);
            match refill {
                Some(refill) => credits.with_refill(refill),
                None => credits,
            }
        })
}

/// Keys in every state: issued with a generated id, label, scopes,
/// metadata, expiry and time, then put through a random sequence of
/// operations (refused ones change nothing). Active and inactive, single and
/// renewing with every decision, with and without recorded uses, revoked
/// tokens, expiries, rate limits and credits.
pub fn api_key() -> impl Strategy<Value = ApiKey> {
    (
        (key_id(), "\\PC{0,40}", scopes(), metadata()),
        timestamp(),
        proptest::option::of(0i64..1_000_000),
        proptest::collection::vec(op(), 0..24),
        any::<u64>(),
    )
        .prop_map(
            |((id, label, scopes, metadata), issued, expiry, ops, seed)| {
                use rand::SeedableRng;
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut new = NewKey::new(id)
                    .label(label)
                    .scopes(scopes)
                    .metadata(metadata);
                if let Some(seconds) = expiry {
                    new = new.expires_at(issued + Duration::seconds(seconds));
                }
                let (mut key, first, _) = ApiKey::issue(new, issued, &mut rng)
                    .unwrap_or_else(|e| unreachable!("valid labels and times: {e}"));
                let mut tokens = vec![first];
                let mut now = issued;
                for op in ops {
                    // Results are irrelevant here: only the states reached matter.
                    let _ = match op {
                        Op::Renew => key
                            .renew(now, &mut rng)
                            .map(|(token, _)| tokens.push(token)),
                        Op::RenewWith(deletion) => key
                            .renew_with(shifted(deletion, now), now, &mut rng)
                            .map(|(token, _)| tokens.push(token)),
                        Op::Revoke(_) => {
                            // Revokes the newest live token.
                            let _ = tokens
                                .iter()
                                .rev()
                                .find(|t| key.revoke_token(t.expose_secret(), now).is_ok());
                            Ok(())
                        }
                        Op::Finalize(deletion) => {
                            key.finalize(shifted(deletion, now), now).map(|_| ())
                        }
                        Op::DeleteOld => key.delete_old(now).map(|_| ()),
                        Op::Undo => key.undo_renewal(now).map(|_| ()),
                        Op::Use(which) => {
                            let matched = if which == Which::Old {
                                TokenMatch::Old
                            } else {
                                TokenMatch::Current
                            };
                            key.record_use(matched, now);
                            Ok(())
                        }
                        Op::Housekeep => {
                            key.housekeep(now);
                            Ok(())
                        }
                        Op::Advance(by) => {
                            now += by;
                            Ok(())
                        }
                        Op::Apply(change) => key.apply(moved(change, now), now).map(|_| ()),
                        Op::ApplyAll(changes) => key
                            .apply_all(changes.into_iter().map(|c| moved(c, now)), now)
                            .map(|_| ()),
                        // A charge changes the meter, which is not the key's.
                        Op::Verify(_) | Op::Reload | Op::Charge(_) => Ok(()),
                    };
                }
                key
            },
        )
}

/// `deletion`, its instant (placed around [`op_now`]) moved around `now`.
fn shifted(deletion: OldTokenDeletion, now: OffsetDateTime) -> OldTokenDeletion {
    match deletion {
        OldTokenDeletion::At(at) => OldTokenDeletion::At(now + (at - op_now())),
        other => other,
    }
}

/// `change`, its expiry (placed around [`op_now`]) moved around `now`.
fn moved(change: Change, now: OffsetDateTime) -> Change {
    match change {
        Change::Expiry(at) => Change::Expiry(at.map(|at| now + (at - op_now()))),
        other => other,
    }
}

/// The clock `op()` places its instants around.
fn op_now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
