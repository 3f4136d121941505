//! `keyctl`: manage API keys in an SQLite database from the command line.
//!
//! ```text
//! cargo run -p keyroll-demo --bin keyctl -- [--db keys.db] <command>
//!
//! create --label L [--id ID] [--prefix kr] [--period 3m|6m] [--enforced]
//!        [--scope S]... [--meta K=V]... [--expires RFC3339] [--networks 10.0.0.0/8,...]
//! set-scopes ID [--scope S]... | set-meta ID [--meta K=V]... | set-expiry ID RFC3339|none
//! set-label ID LABEL | set ID NAME VALUE|none  (any setting: `set ID networks 10.0.0.0/8`)
//! list | show ID | renew ID | undo ID | activate ID | deactivate ID | delete ID
//! finalize ID --delete-old now|later|at=2025-01-01T00:00:00Z|after-use=1h
//! delete-old ID [--if-idle 7d] | housekeep
//! verify ID [--from IP]     (reads the token from standard input; records the use)
//! revoke [--id ID]          (reads a leaked token from standard input and revokes it;
//!                            --id for a token of keyroll 0.1, which names no key)
//! whois                     (reads a token from standard input; prints the key id it names)
//! migrate                   (creates or upgrades the PostgreSQL table: run it once, as a role
//!                            that may create tables; the service's role needs only DML)
//! notices [--limit 50]      (the outbox: events and notices pending and parked)
//! events ID [--limit 20]    (a key's events in the outbox, newest first, delivered or not)
//! retry-delivery ID         (a parked delivery, pending again: the service retries it)
//! ```
//!
//! Every change's events go to the store's outbox, which the service
//! (`http_service`) delivers.
//!
//! Tokens are read from standard input, never taken as arguments: arguments
//! are visible to other users in `ps` and stay in shell history. Durations
//! are humantime's (`90s`, `30m`, `1h 30m`, `7d`). `--now T` is for looking
//! at keys as they will be at `T` (freshness, expiry, scheduled deletions):
//! with it, nothing is written. Labels are printed with control characters
//! escaped. Every error is one line on stderr and a non-zero exit status.

use std::error::Error;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use keyroll::meter::{Allowance, Credits, RateLimit, Refill};
use keyroll::outbox::{EntryId, EntryState};
use keyroll::store::{BOOTSTRAP_RETIRED, DynKeyStore, KeyStore, UsageRow};
use keyroll::{
    ApiKey, Change, Credentials, Decision, Event, ExpiringReason, Freshness, KeyId, KeyManager,
    Metadata, NewKey, OldTokenDeletion, Outcome, OwnerId, OwnerLimits, Policy, RenewalEnforcement,
    RenewalState, Scope, Scopes, TokenFormat, TokenInfo,
};
use keyroll_postgres::PgStore;
use keyroll_sqlite::SqliteStore;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Duration, OffsetDateTime};

#[derive(Parser)]
#[command(
    name = "keyctl",
    about = "Manage API keys whose tokens are renewed with an overlap"
)]
struct Cli {
    /// The SQLite database file (when no `--store` is given).
    #[arg(long, global = true, default_value = "keys.db")]
    db: PathBuf,
    /// Where the keys are: `sqlite:PATH` or `postgres:URL` (default: the
    /// SQLite file `--db`).
    #[arg(long, global = true, env = "KEYROLL_STORE")]
    store: Option<String>,
    /// Look at the keys as if the time were this RFC 3339 instant (to see
    /// freshness, expiry and scheduled deletions). Nothing is written:
    /// commands that change keys are refused, and `verify` records no use.
    #[arg(long, global = true, value_parser = parse_time)]
    now: Option<OffsetDateTime>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a key and print its first token, once.
    Create {
        /// A label for people.
        #[arg(long)]
        label: String,
        /// The key id (random when omitted).
        #[arg(long)]
        id: Option<KeyId>,
        /// The token prefix.
        #[arg(long, default_value = "kr")]
        prefix: String,
        /// The renewal period.
        #[arg(long, value_enum, default_value_t = Period::ThreeMonths)]
        period: Period,
        /// Refuse tokens past their renewal period (default: only warn).
        #[arg(long)]
        enforced: bool,
        /// A scope the key holds (repeat for more).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A metadata entry, `KEY=VALUE` (repeat for more).
        #[arg(long = "meta", value_parser = parse_entry)]
        metadata: Vec<(String, String)>,
        /// A hard expiry of the whole key (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        expires: Option<OffsetDateTime>,
        /// Whom the key belongs to (`keyctl list --owner` lists them).
        #[arg(long)]
        owner: Option<OwnerId>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Replace a key's scopes (none given: no scopes).
    SetScopes {
        #[arg(value_parser = existing_id)]
        id: KeyId,
        /// A scope the key holds (repeat for more).
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// Replace a key's metadata (none given: no metadata).
    SetMeta {
        #[arg(value_parser = existing_id)]
        id: KeyId,
        /// A metadata entry, `KEY=VALUE` (repeat for more).
        #[arg(long = "meta", value_parser = parse_entry)]
        metadata: Vec<(String, String)>,
    },
    /// Move a key's hard expiry (RFC 3339), or remove it (`none`).
    SetExpiry {
        #[arg(value_parser = existing_id)]
        id: KeyId,
        #[arg(value_parser = parse_expiry)]
        expires: ExpiryArg,
    },
    /// Set any setting by its name (`networks`, `label`, `rate_limit`,
    /// ...) to VALUE, or remove it (`none`). VALUE is the setting as text
    /// (`10.0.0.0/8,2001:db8::/32`) or as JSON (`{"limit": 100, "period":
    /// "1m"}`).
    Set {
        #[arg(value_parser = existing_id)]
        id: KeyId,
        name: String,
        value: String,
    },
    /// Change a key's label.
    SetLabel {
        #[arg(value_parser = existing_id)]
        id: KeyId,
        label: String,
    },
    /// Set a key's owner, or remove it (`none`).
    SetOwner {
        #[arg(value_parser = existing_id)]
        id: KeyId,
        #[arg(value_parser = parse_owner)]
        owner: OwnerArg,
    },
    /// Set a key's rate limit, `LIMIT/PERIOD` (e.g. `100/1m`), or remove it
    /// (`none`). The bucket keeps its state.
    SetRateLimit {
        #[arg(value_parser = existing_id)]
        id: KeyId,
        #[arg(value_parser = parse_rate)]
        rate: RateArg,
        /// The most requests at once (default: LIMIT).
        #[arg(long)]
        burst: Option<u32>,
    },
    /// Set a key's credits (e.g. `1000`), which start over at that amount,
    /// or remove them (`none`).
    SetCredits {
        #[arg(value_parser = existing_id)]
        id: KeyId,
        #[arg(value_parser = parse_credits)]
        credits: CreditsArg,
        /// Set the balance back to AMOUNT every EVERY (e.g. `1000/30d`).
        #[arg(long, value_parser = parse_rate_u64)]
        refill: Option<(u64, Duration)>,
    },
    /// Show an owner: the limits its keys share, what they allow now, its
    /// keys, and their usage summed by UTC hour.
    Owner {
        #[arg(value_parser = existing_owner)]
        owner: OwnerId,
        /// How far back the usage goes (e.g. `7d`, `24h`).
        #[arg(long, value_parser = parse_duration, default_value = "7d")]
        since: Duration,
    },
    /// Set the limits an owner's keys share: a request of any of them is
    /// admitted only if its own limits and these both admit it. The same
    /// credits set again keep their balance; other credits start over.
    SetOwnerLimits {
        owner: OwnerId,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Clear the limits an owner's keys share: each key is then metered by
    /// its own limits alone.
    ClearOwnerLimits {
        #[arg(value_parser = existing_owner)]
        owner: OwnerId,
    },
    /// List every key, like the admin page (a revoked current token shows
    /// as `REVOKED`).
    List {
        /// Only this owner's keys.
        #[arg(long, value_parser = existing_owner)]
        owner: Option<OwnerId>,
    },
    /// Print a key's usage counts by UTC hour (accepted, rate limited,
    /// usage exceeded, refused), with a sparkline of each.
    Usage {
        #[arg(value_parser = existing_id)]
        id: KeyId,
        /// How far back (e.g. `7d`, `24h`).
        #[arg(long, value_parser = parse_duration, default_value = "7d")]
        since: Duration,
    },
    /// List the keys that expire, or whose token falls due for renewal,
    /// within DURATION (e.g. `14d`), soonest first.
    Expiring {
        #[arg(value_parser = parse_duration)]
        within: Duration,
    },
    /// Show one key.
    Show {
        #[arg(value_parser = existing_id)]
        id: KeyId,
    },
    /// Renew a key's token: print the new token, once.
    Renew {
        #[arg(value_parser = existing_id)]
        id: KeyId,
    },
    /// Decide what happens to the old token of a pending renewal.
    Finalize {
        #[arg(value_parser = existing_id)]
        id: KeyId,
        /// `now`, `later` (until delete-old), `at=RFC3339` (scheduled), or
        /// `after-use=DURATION` (once the new token is used, plus this grace).
        #[arg(long, value_parser = parse_deletion)]
        delete_old: OldTokenDeletion,
    },
    /// Delete the old token, irreversibly.
    DeleteOld {
        #[arg(value_parser = existing_id)]
        id: KeyId,
        /// Refuse if the old token was used within this duration (e.g. 7d).
        #[arg(long, value_parser = parse_duration)]
        if_idle: Option<Duration>,
    },
    /// Apply every scheduled deletion of old tokens that is due.
    Housekeep,
    /// Undo a pending renewal: the old token is the only one again.
    Undo {
        #[arg(value_parser = existing_id)]
        id: KeyId,
    },
    /// Activate a key.
    Activate {
        #[arg(value_parser = existing_id)]
        id: KeyId,
    },
    /// Deactivate a key: every request with it fails.
    Deactivate {
        #[arg(value_parser = existing_id)]
        id: KeyId,
    },
    /// Delete a key, irreversibly.
    Delete {
        #[arg(value_parser = existing_id)]
        id: KeyId,
    },
    /// Check a token, read from standard input, against a key.
    Verify {
        #[arg(value_parser = existing_id)]
        id: KeyId,
        /// The address the request comes from (for a key with networks).
        #[arg(long)]
        from: Option<std::net::IpAddr>,
    },
    /// Revoke a leaked token, read from standard input: an old token is
    /// deleted, a current token never verifies again (renew the key).
    Revoke {
        /// The key the token belongs to: needed for a token issued by
        /// keyroll 0.1, which names no key.
        #[arg(long, value_parser = existing_id)]
        id: Option<KeyId>,
    },
    /// Print the key id a token (read from standard input) names, after
    /// checking its shape and checksum. Reads no database.
    Whois,
    /// Create or upgrade the store's table and its notification triggers
    /// (PostgreSQL; SQLite creates its table when it opens). Run it once,
    /// as a role that may create tables: other commands never do. Prints
    /// the `GRANT` the service's own role needs.
    Migrate {
        /// The role the service connects as (for the printed `GRANT`).
        #[arg(long, default_value = "keyroll")]
        service_role: String,
    },
    /// Show the outbox: how many events and notices wait for delivery and
    /// how many were given up on (parked), then the entries of each, in
    /// order, with their attempts and last error.
    Notices {
        /// At most this many entries of each state.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show a key's events from the outbox, newest first, delivered or
    /// not (until delivered ones are pruned), a deleted key's too.
    Events {
        #[arg(value_parser = existing_id)]
        id: KeyId,
        /// At most this many entries.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Put a parked delivery back to pending (`keyctl notices` lists them),
    /// by its id (`12` or `evt_12`): the service delivers it again.
    RetryDelivery { id: String },
    /// Let the admin API's bootstrap token act again: it retired for good
    /// once an active key held the admin scope. Audited: the step is
    /// printed to standard error with the time and the retirement it
    /// undoes.
    RestoreBootstrap,
}

impl Command {
    /// The key and the change, for a command that changes one setting or
    /// the status (`set-*`, `activate`, `deactivate`).
    fn change(&self) -> Result<Option<(&KeyId, Change)>, Box<dyn Error>> {
        Ok(Some(match self {
            Command::SetScopes { id, scopes } => (id, Change::Scopes(Scopes::new(scopes)?)),
            Command::SetMeta { id, metadata } => (
                id,
                Change::Metadata(Metadata::new(metadata.iter().cloned())?),
            ),
            Command::SetExpiry { id, expires } => (id, Change::Expiry(expires.0)),
            Command::SetLabel { id, label } => (id, Change::Label(label.clone())),
            Command::SetOwner { id, owner } => (id, Change::Owner(owner.0.clone())),
            Command::SetRateLimit { id, rate, burst } => {
                (id, Change::RateLimit(rate_limit(rate.0, *burst)?))
            }
            Command::SetCredits {
                id,
                credits: balance,
                refill,
            } => (id, Change::Credits(credits(balance.0, *refill)?)),
            Command::Set { id, name, value } => (id, setting(name, value)?),
            Command::Activate { id } => (id, Change::Activate),
            Command::Deactivate { id } => (id, Change::Deactivate),
            _ => return Ok(None),
        }))
    }

    /// Whether the command only reads keys (and may run with `--now`).
    fn only_looks(&self) -> bool {
        matches!(
            self,
            Command::List { .. }
                | Command::Owner { .. }
                | Command::Notices { .. }
                | Command::Events { .. }
                | Command::Expiring { .. }
                | Command::Usage { .. }
                | Command::Show { .. }
                | Command::Verify { .. }
                | Command::Whois
        )
    }
}

/// A rate limit and credits as flags: a key's (`create`), or those an
/// owner's keys share (`set-owner-limits`).
#[derive(Args)]
struct LimitArgs {
    /// A rate limit, `LIMIT/PERIOD` (e.g. `100/1m`).
    #[arg(long, value_parser = parse_limit)]
    rate_limit: Option<(u32, Duration)>,
    /// The rate limit's burst (default: LIMIT).
    #[arg(long, requires = "rate_limit")]
    burst: Option<u32>,
    /// Credits, spent one a request.
    #[arg(long)]
    credits: Option<u64>,
    /// Set the credits back to AMOUNT every EVERY (e.g. `1000/30d`).
    #[arg(long, value_parser = parse_rate_u64, requires = "credits")]
    refill: Option<(u64, Duration)>,
}

impl LimitArgs {
    /// The rate limit and the credits the flags give.
    fn parsed(&self) -> Result<(Option<RateLimit>, Option<Credits>), Box<dyn Error>> {
        Ok((
            rate_limit(self.rate_limit, self.burst)?,
            credits(self.credits, self.refill)?,
        ))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Period {
    #[value(name = "3m")]
    ThreeMonths,
    #[value(name = "6m")]
    SixMonths,
}

/// The settings `create` has flags of its own for; every other one gets
/// `--NAME VALUE` (`_` as `-`), read as `keyctl set` reads its VALUE.
const CREATE_FLAGS: [&str; 7] = [
    "label",
    "scopes",
    "metadata",
    "expiry",
    "owner",
    "rate_limit",
    "credits",
];

/// The command line, with `create`'s flags for the settings it has none
/// of its own for (`--networks`, ...), and the settings those flags give.
fn parse_cli() -> Result<(Cli, Vec<Change>), Box<dyn Error>> {
    let generic: Vec<&'static str> = Change::SETTINGS
        .iter()
        .copied()
        .filter(|name| !CREATE_FLAGS.contains(name))
        .collect();
    let mut command = Cli::command();
    for &name in &generic {
        command = command.mut_subcommand("create", |create| {
            create.arg(
                clap::Arg::new(name)
                    .long(name.replace('_', "-"))
                    .value_name("VALUE")
                    .help(format!(
                        "Its {}, as `keyctl set ID {name} VALUE` takes it",
                        name.replace('_', " ")
                    )),
            )
        });
    }
    let matches = command.get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    let mut settings = Vec::new();
    if let Some(create) = matches.subcommand_matches("create") {
        for name in generic {
            if let Some(value) = create.get_one::<String>(name) {
                settings.push(setting(name, value)?);
            }
        }
    }
    Ok((cli, settings))
}

/// The change that sets `name` to `value`: `none` removes it; else the
/// text as a JSON string, or, if the setting takes no string, as JSON.
fn setting(name: &str, value: &str) -> Result<Change, String> {
    let of = |value| serde_json::from_value::<Change>(serde_json::json!({ name: value }));
    let as_json = || serde_json::from_str::<serde_json::Value>(value).map(of);
    match value {
        "none" => of(serde_json::Value::Null),
        _ => of(value.into()).or_else(|e| as_json().unwrap_or(Err(e))),
    }
    .map_err(|e| format!("invalid {name} {value:?}: {e}"))
}

fn parse_deletion(text: &str) -> Result<OldTokenDeletion, String> {
    match text.split_once('=') {
        None if text == "now" => Ok(OldTokenDeletion::Now),
        None if text == "later" => Ok(OldTokenDeletion::Later),
        Some(("at", at)) => parse_time(at).map(OldTokenDeletion::At),
        Some(("after-use", grace)) => {
            parse_duration(grace).map(|grace| OldTokenDeletion::AfterNewTokenUse { grace })
        }
        _ => Err("expected now, later, at=RFC3339 or after-use=DURATION".into()),
    }
}

/// A duration such as `90s`, `30m`, `1h 30m` or `7d` (never negative).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let std = humantime::parse_duration(text)
        .map_err(|e| format!("not a duration: {text:?} ({e}; use e.g. 90s, 30m, 1h, 7d)"))?;
    Duration::try_from(std).map_err(|_| format!("duration {text:?} is too long"))
}

/// `N/DURATION`, as `100/1m`.
fn parse_rate_u64(text: &str) -> Result<(u64, Duration), String> {
    let (n, every) = text
        .split_once('/')
        .ok_or_else(|| format!("expected N/DURATION (e.g. 100/1m), not {text:?}"))?;
    let n = n
        .parse()
        .map_err(|_| format!("not a count: {n:?} in {text:?}"))?;
    Ok((n, parse_duration(every)?))
}

/// A rate, `LIMIT/PERIOD`.
fn parse_limit(text: &str) -> Result<(u32, Duration), String> {
    let (n, period) = parse_rate_u64(text)?;
    let n = u32::try_from(n).map_err(|_| format!("limit {n} is too large"))?;
    Ok((n, period))
}

/// The id of a stored key: one that a version before 0.4 allowed (`.x`)
/// still names its key, to show, rename or delete it. `create` takes only
/// ids that start with a letter or digit.
fn existing_id(text: &str) -> Result<KeyId, String> {
    KeyId::existing(text).map_err(|e| e.to_string())
}

/// The owner of stored keys, by the rule of versions before 0.4.
fn existing_owner(text: &str) -> Result<OwnerId, String> {
    OwnerId::existing(text).map_err(|e| e.to_string())
}

/// An owner, or its removal.
#[derive(Clone)]
struct OwnerArg(Option<OwnerId>);

fn parse_owner(text: &str) -> Result<OwnerArg, String> {
    match text {
        "none" => Ok(OwnerArg(None)),
        _ => OwnerId::new(text)
            .map(|owner| OwnerArg(Some(owner)))
            .map_err(|e| e.to_string()),
    }
}

/// A rate limit, or its removal.
#[derive(Clone, Copy)]
struct RateArg(Option<(u32, Duration)>);

fn parse_rate(text: &str) -> Result<RateArg, String> {
    match text {
        "none" => Ok(RateArg(None)),
        _ => parse_limit(text).map(|rate| RateArg(Some(rate))),
    }
}

/// A credit balance, or its removal.
#[derive(Clone, Copy)]
struct CreditsArg(Option<u64>);

fn parse_credits(text: &str) -> Result<CreditsArg, String> {
    match text {
        "none" => Ok(CreditsArg(None)),
        _ => text
            .parse()
            .map(|n| CreditsArg(Some(n)))
            .map_err(|_| format!("expected a count of credits or none, not {text:?}")),
    }
}

/// The rate limit of `keyctl`'s arguments.
fn rate_limit(
    rate: Option<(u32, Duration)>,
    burst: Option<u32>,
) -> Result<Option<RateLimit>, Box<dyn Error>> {
    let Some((limit, period)) = rate else {
        return match burst {
            Some(_) => Err("--burst needs a rate limit".into()),
            None => Ok(None),
        };
    };
    let rate = RateLimit::new(limit, period)?;
    Ok(Some(match burst {
        Some(burst) => rate.with_burst(burst)?,
        None => rate,
    }))
}

/// The credits of `keyctl`'s arguments.
fn credits(
    credits: Option<u64>,
    refill: Option<(u64, Duration)>,
) -> Result<Option<Credits>, Box<dyn Error>> {
    let Some(credits) = credits else {
        return match refill {
            Some(_) => Err("--refill needs credits".into()),
            None => Ok(None),
        };
    };
    let credits = Credits::new(credits);
    Ok(Some(match refill {
        Some((amount, every)) => credits.with_refill(Refill::new(amount, every)?),
        None => credits,
    }))
}

/// `KEY=VALUE`.
fn parse_entry(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, not {text:?}"))
}

/// An expiry, or its removal.
#[derive(Clone, Copy)]
struct ExpiryArg(Option<OffsetDateTime>);

fn parse_expiry(text: &str) -> Result<ExpiryArg, String> {
    match text {
        "none" => Ok(ExpiryArg(None)),
        _ => parse_time(text).map(|at| ExpiryArg(Some(at))),
    }
}

fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| format!("not an RFC 3339 time: {e}"))
}

fn date(t: OffsetDateTime) -> String {
    t.format(format_description!("[year]-[month]-[day] [hour]:[minute]"))
        .unwrap_or_else(|_| t.to_string())
}

fn alert(freshness: Freshness) -> &'static str {
    match freshness {
        Freshness::Fresh { .. } => "",
        Freshness::Outdated { .. } => "outdated",
        Freshness::LongOutdated { .. } => "long outdated",
    }
}

fn last_used(token: &TokenInfo) -> String {
    token.last_used_at().map_or_else(|| "never".into(), date)
}

fn token_line(which: &str, token: &TokenInfo, now: OffsetDateTime) -> String {
    let revoked = token
        .revoked_at()
        .map_or_else(String::new, |at| format!("  REVOKED {}", date(at)));
    format!(
        "{which:<7} created {}  due {}  last used {}  {}{revoked}",
        date(token.created_at()),
        date(token.due_at()),
        last_used(token),
        alert(token.freshness(now))
    )
}

fn decision(key: &ApiKey) -> String {
    match key.state() {
        RenewalState::Renewing {
            decision: Decision::Scheduled { at },
        } => {
            format!("old token deleted at {}", date(at))
        }
        RenewalState::Renewing {
            decision: Decision::AfterNewTokenUse { grace },
        } => {
            format!("old token deleted {grace} after the new one is used")
        }
        RenewalState::Renewing { .. } => "pending deletion: old token".into(),
        _ => String::new(),
    }
}

fn scopes(key: &ApiKey) -> String {
    let all: Vec<&str> = key.scopes().iter().map(Scope::as_str).collect();
    all.join(" ")
}

fn metadata(key: &ApiKey) -> String {
    let all: Vec<String> = key
        .metadata()
        .iter()
        .map(|(k, v)| format!("{k}={}", v.escape_debug()))
        .collect();
    all.join(" ")
}

fn expiry(key: &ApiKey, now: OffsetDateTime) -> String {
    match key.expires_at() {
        None => "never".into(),
        Some(at) if key.is_expired(now) => format!("{} (EXPIRED)", date(at)),
        Some(at) => date(at),
    }
}

/// A label as printed: control characters (which keyroll 0.1 accepted)
/// escaped, so that a label cannot rewrite the terminal.
fn label(key: &ApiKey) -> String {
    key.label().escape_debug().to_string()
}

fn show(key: &ApiKey, now: OffsetDateTime) {
    println!("id       {}", key.id());
    println!("label    {}", label(key));
    println!("owner    {}", key.owner().map_or("", OwnerId::as_str));
    println!("status   {}", key.status());
    println!("version  {}", key.version());
    println!("scopes   {}", scopes(key));
    println!("metadata {}", metadata(key));
    println!("expires  {}", expiry(key, now));
    // The settings without a line of their own above, whatever they are.
    for change in key.settings() {
        if !CREATE_FLAGS.contains(&change.name()) {
            let value = match serde_json::to_value(&change).unwrap_or_default() {
                serde_json::Value::Object(mut setting) => setting.remove(change.name()),
                _ => None,
            };
            match value {
                Some(serde_json::Value::String(text)) => println!("{:<8} {text}", change.name()),
                Some(value) => println!("{:<8} {value}", change.name()),
                None => {}
            }
        }
    }
    println!(
        "last use {} (by any token, deleted ones included)",
        key.last_used_at().map_or_else(|| "never".into(), date)
    );
    println!(
        "{}",
        token_line("current", key.current_token(), now).trim_end()
    );
    if let Some(old) = key.old_token() {
        println!("{}", token_line("old", old, now).trim_end());
        println!("{}", decision(key));
    }
}

/// The limits of an allowance (a key's, then its owner's), and what they
/// allow now.
fn show_limits(allowance: &Allowance) {
    if let (Some(rate), Some(remaining), Some(reset)) = (
        allowance.rate_limit(),
        allowance.rate_remaining(),
        allowance.rate_reset(),
    ) {
        println!(
            "rate     {} per {}, burst {}: {remaining} left now, full in {}",
            rate.limit(),
            rate.period(),
            rate.burst(),
            reset
        );
    }
    if let (Some(credits), Some(remaining)) = (allowance.credits(), allowance.credits_remaining()) {
        let refill = match (credits.refill(), allowance.next_refill()) {
            (Some(refill), Some(at)) => format!(
                "; next refill {} (to {} every {})",
                date(at),
                refill.amount(),
                refill.every()
            ),
            _ => "; no refill".to_owned(),
        };
        println!("credits  {remaining} left{refill}");
    }
    if let (Some(owner), Some(shared)) = (allowance.owner_id(), allowance.owner()) {
        println!("owner {owner}'s limits, shared by its keys:");
        show_limits(shared);
    }
}

/// Where `--store` (or `--db`) says the keys are.
enum Location<'a> {
    Sqlite(&'a std::path::Path),
    Postgres(&'a str),
}

impl Cli {
    fn location(&self) -> Result<Location<'_>, Box<dyn Error>> {
        match self.store.as_deref().map(|spec| spec.split_once(':')) {
            None => Ok(Location::Sqlite(&self.db)),
            Some(Some(("sqlite", path))) => Ok(Location::Sqlite(path.as_ref())),
            Some(Some(("postgres", url))) => Ok(Location::Postgres(url)),
            _ => Err("unknown --store: use sqlite:PATH or postgres:URL".into()),
        }
    }
}

/// The store `--store` (or `--db`) names.
async fn open_store(cli: &Cli) -> Result<DynKeyStore, Box<dyn Error>> {
    Ok(match cli.location()? {
        Location::Sqlite(path) => DynKeyStore::new(SqliteStore::open(path)?),
        Location::Postgres(url) => DynKeyStore::new(PgStore::connect(url).await?),
    })
}

/// `keyctl migrate`.
/// `at` as RFC 3339.
fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

/// Who runs keyctl, for the audit line.
fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "an unknown user".into())
}

async fn migrate(cli: &Cli, service_role: &str) -> Result<(), Box<dyn Error>> {
    match cli.location()? {
        Location::Sqlite(path) => {
            SqliteStore::open(path)?;
            println!(
                "SQLite creates its table when it opens: {} is ready",
                path.display()
            );
        }
        Location::Postgres(url) => {
            let store = PgStore::connect(url).await?;
            store.migrate().await?;
            println!(
                "the PostgreSQL tables (keyroll_keys and its meters, usage, markers, owners and \
                 outbox) and their triggers are ready; the service's role needs only:\n{}",
                store.grants(service_role)
            );
        }
    }
    Ok(())
}

async fn list(
    manager: &KeyManager<DynKeyStore>,
    owner: Option<&OwnerId>,
    now: OffsetDateTime,
) -> Result<(), Box<dyn Error>> {
    println!(
        "{:<24} {:<20} {:<16} {:<8} {:<16} {:<16} {:<13} {:<16} {:<16} {:<16} {:<16} {:<26} {:<30} NOTE",
        "ID",
        "LABEL",
        "OWNER",
        "STATUS",
        "TOKEN CREATED",
        "TOKEN DUE",
        "FRESHNESS",
        "LAST USED",
        "OLD CREATED",
        "OLD DUE",
        "OLD LAST USED",
        "EXPIRES",
        "SCOPES"
    );
    let mut after: Option<KeyId> = None;
    loop {
        let page = match owner {
            Some(owner) => manager.list_owned(owner, after.as_ref(), 100).await?,
            None => manager.list(after.as_ref(), 100).await?,
        };
        let Some(last) = page.last() else { break };
        after = Some(last.id().clone());
        for key in &page {
            let current = key.current_token();
            let (old_created, old_due, old_used) = match key.old_token() {
                Some(old) => (date(old.created_at()), date(old.due_at()), last_used(old)),
                None => Default::default(),
            };
            let freshness = match (current.revoked_at(), alert(key.freshness(now))) {
                (Some(_), _) => "REVOKED",
                (None, "") => "fresh",
                (None, other) => other,
            };
            println!(
                "{:<24} {:<20} {:<16} {:<8} {:<16} {:<16} {:<13} {:<16} {:<16} {:<16} {:<16} {:<26} {:<30} {}",
                key.id().as_str(),
                label(key).chars().take(20).collect::<String>(),
                key.owner().map_or("", OwnerId::as_str),
                key.status(),
                date(current.created_at()),
                date(current.due_at()),
                freshness,
                last_used(current),
                old_created,
                old_due,
                old_used,
                expiry(key, now),
                scopes(key),
                decision(key),
            );
        }
    }
    Ok(())
}

/// `keyctl usage`: the hours with counts, then a sparkline of every hour
/// of the window for each outcome.
async fn usage(
    manager: &KeyManager<DynKeyStore>,
    id: &KeyId,
    since: Duration,
    now: OffsetDateTime,
) -> Result<(), Box<dyn Error>> {
    let from = now.saturating_sub(since);
    let end = now + Duration::HOUR;
    let rows = manager.usage(id, from, end).await?;
    println!(
        "{:<16} {:>10} {:>13} {:>15} {:>10}",
        "HOUR (UTC)", "ACCEPTED", "RATE LIMITED", "USAGE EXCEEDED", "REFUSED"
    );
    for row in &rows {
        println!(
            "{:<16} {:>10} {:>13} {:>15} {:>10}",
            date(row.hour_start()),
            row.accepted,
            row.rate_limited,
            row.usage_exceeded,
            row.refused
        );
    }
    let (first, last) = (UsageRow::hour_of(from), UsageRow::hour_of(end));
    for (name, outcome) in [
        ("accepted", Outcome::Accepted),
        ("rate limited", Outcome::RateLimited),
        ("usage exceeded", Outcome::UsageExceeded),
        ("refused", Outcome::Refused),
    ] {
        let hourly: Vec<u64> = (first..last)
            .map(|hour| {
                rows.iter()
                    .find(|r| r.hour == hour)
                    .map_or(0, |r| r.count(outcome))
            })
            .collect();
        let total: u64 = hourly.iter().sum();
        println!("{name:<15} {} {total}", sparkline(&hourly));
    }
    Ok(())
}

/// `keyctl owner`: the owner's limits and what they allow, its keys, and
/// their usage summed by hour.
async fn show_owner(
    manager: &KeyManager<DynKeyStore>,
    owner: &OwnerId,
    since: Duration,
    now: OffsetDateTime,
) -> Result<(), Box<dyn Error>> {
    println!("owner    {owner}");
    match manager.owner_limits(owner).await? {
        Some(limits) if !limits.is_empty() => {
            println!(
                "limits   shared by its keys (version {}):",
                limits.version()
            );
            if let Some(allowance) = manager.owner_allowance(owner, now).await? {
                show_limits(&allowance);
            }
        }
        _ => println!("limits   none: each key is metered by its own"),
    }
    let (from, end) = (now.saturating_sub(since), now + Duration::HOUR);
    let mut hours = std::collections::BTreeMap::<i64, UsageRow>::new();
    let mut after = None;
    let mut count = 0;
    loop {
        let page = manager.list_owned(owner, after.as_ref(), 500).await?;
        for key in &page {
            println!("key      {} ({})", key.id(), key.status());
            for row in manager.usage(key.id(), from, end).await? {
                hours
                    .entry(row.hour)
                    .and_modify(|kept| kept.merge(&row))
                    .or_insert(row);
            }
        }
        count += page.len();
        match page.last() {
            Some(last) if page.len() == 500 => after = Some(last.id().clone()),
            _ => break,
        }
    }
    println!("{count} key(s); usage of all of them:");
    let accepted: Vec<u64> = (UsageRow::hour_of(from)..UsageRow::hour_of(end))
        .map(|hour| hours.get(&hour).map_or(0, |row| row.accepted))
        .collect();
    let total = |f: fn(&UsageRow) -> u64| hours.values().map(f).sum::<u64>();
    println!(
        "accepted {} {}; rate limited {}, usage exceeded {}, refused {}",
        sparkline(&accepted),
        total(|r| r.accepted),
        total(|r| r.rate_limited),
        total(|r| r.usage_exceeded),
        total(|r| r.refused)
    );
    Ok(())
}

/// One character an hour: blank for none, then `▁` to `█` in proportion
/// to the busiest hour.
fn sparkline(counts: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    counts
        .iter()
        .map(|&n| match n {
            0 => ' ',
            n => BARS[((u128::from(n) * 8).div_ceil(u128::from(max)) - 1).min(7) as usize],
        })
        .collect()
}

/// `keyctl expiring`.
async fn expiring(
    manager: &KeyManager<DynKeyStore>,
    within: Duration,
    now: OffsetDateTime,
) -> Result<(), Box<dyn Error>> {
    println!(
        "{:<24} {:<20} {:<16} {:<16} WHAT",
        "ID", "LABEL", "OWNER", "WHEN"
    );
    for soon in manager.expiring(within, now).await? {
        let what = match soon.reason {
            ExpiringReason::KeyExpires => "the key expires",
            ExpiringReason::RenewalDue if soon.at <= now => "renewal overdue",
            _ => "renewal due",
        };
        println!(
            "{:<24} {:<20} {:<16} {:<16} {what}",
            soon.key.id().as_str(),
            label(&soon.key).chars().take(20).collect::<String>(),
            soon.key.owner().map_or("", OwnerId::as_str),
            date(soon.at),
        );
    }
    Ok(())
}

/// `keyctl notices`.
async fn notices(store: &DynKeyStore, limit: usize) -> Result<(), Box<dyn Error>> {
    let counts = store.outbox_counts().await?;
    println!("{} pending, {} parked", counts.pending, counts.parked);
    for (state, name) in [
        (EntryState::Pending, "pending"),
        (EntryState::Parked, "parked"),
    ] {
        let entries = store.outbox(state, None, limit).await?;
        if entries.is_empty() {
            continue;
        }
        println!("\n{name}:");
        println!(
            "{:<12} {:<22} {:<24} {:>8} {:<16} LAST ERROR",
            "ID", "EVENT", "ABOUT", "ATTEMPTS", "NEXT ATTEMPT"
        );
        for entry in entries {
            let about = match (entry.event.key_id(), entry.event.owner_id()) {
                (Some(key), _) => key.to_string(),
                (None, Some(owner)) => format!("owner {owner}"),
                (None, None) => String::new(),
            };
            let next = match state {
                EntryState::Pending => date(entry.next_attempt_at),
                _ => String::new(),
            };
            println!(
                "{:<12} {:<22} {:<24} {:>8} {:<16} {}",
                entry.id.to_string(),
                entry.event.name(),
                about,
                entry.attempts,
                next,
                entry.last_error.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// An outbox entry's id: `12`, or `evt_12` as its webhook-id.
fn entry_id(raw: &str) -> Result<EntryId, String> {
    raw.strip_prefix("evt_")
        .unwrap_or(raw)
        .parse()
        .map(EntryId::new)
        .map_err(|_| format!("{raw:?} is no entry id: give 12 or evt_12"))
}

fn print_event(event: &Event) -> Result<(), Box<dyn Error>> {
    println!("{}", serde_json::to_string(event)?);
    Ok(())
}

/// The first line of standard input, wiped from memory when dropped.
fn token_from_stdin() -> Result<zeroize::Zeroizing<String>, Box<dyn Error>> {
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin().lock().read_line(&mut line)?;
    let len = line.trim_end().len();
    line.truncate(len);
    Ok(line)
}

async fn run(cli: Cli, settings: Vec<Change>) -> Result<(), Box<dyn Error>> {
    if cli.now.is_some() && !cli.command.only_looks() {
        return Err(
            "--now is for looking (list, show, verify, whois): it never changes keys".into(),
        );
    }
    match &cli.command {
        Command::Whois => {
            println!("{}", KeyId::from_token(&token_from_stdin()?)?);
            return Ok(());
        }
        Command::Migrate { service_role } => return migrate(&cli, service_role).await,
        _ => {}
    }
    let now = cli.now.unwrap_or_else(OffsetDateTime::now_utc);
    // Every change's events go to the outbox, which the service delivers.
    let manager = KeyManager::new(open_store(&cli).await?)
        .with_usage_recording(cli.now.is_none())
        .with_outbox();
    let mut rng = rand::rng();
    // Every command that changes a setting or the status is one `Change`.
    if let Some((id, change)) = cli.command.change()? {
        print_event(&manager.apply(id, change, now).await?)?;
        return Ok(());
    }
    match cli.command {
        Command::Create {
            label,
            id,
            prefix,
            period,
            enforced,
            scopes,
            metadata,
            expires,
            owner,
            limits,
        } => {
            let policy = Policy {
                token_format: TokenFormat::new(&prefix)?,
                renewal_period: match period {
                    Period::ThreeMonths => Policy::THREE_MONTHS,
                    Period::SixMonths => Policy::SIX_MONTHS,
                },
                enforcement: if enforced {
                    RenewalEnforcement::Enforced
                } else {
                    RenewalEnforcement::Advisory
                },
                ..Policy::default()
            };
            let id = id.unwrap_or_else(|| KeyId::generate(&mut rng));
            let mut new = NewKey::new(id.clone())
                .label(label)
                .policy(policy)
                .scopes(Scopes::new(scopes)?)
                .metadata(Metadata::new(metadata)?);
            if let Some(at) = expires {
                new = new.expires_at(at);
            }
            if let Some(owner) = owner {
                new = new.owner(owner);
            }
            let (rate, credits) = limits.parsed()?;
            if let Some(rate) = rate {
                new = new.rate_limit(rate);
            }
            if let Some(credits) = credits {
                new = new.credits(credits);
            }
            for setting in settings {
                new = new.with(setting)?;
            }
            let (token, event) = manager.create_key(new, now, &mut rng).await?;
            print_event(&event)?;
            println!("key id: {id}");
            println!("token:  {}", token.expose_secret());
            eprintln!("warning: copy the token now; it will not be shown again");
        }
        Command::List { owner } => list(&manager, owner.as_ref(), now).await?,
        Command::Owner { owner, since } => show_owner(&manager, &owner, since, now).await?,
        Command::SetOwnerLimits { owner, limits } => {
            let (rate, credits) = limits.parsed()?;
            let mut limits = OwnerLimits::new();
            if let Some(rate) = rate {
                limits = limits.rate_limit(rate);
            }
            if let Some(credits) = credits {
                limits = limits.credits(credits);
            }
            if limits.is_empty() {
                return Err("give --rate-limit, --credits or both \
                    (`keyctl clear-owner-limits` clears them)"
                    .into());
            }
            print_event(&manager.set_owner_limits(&owner, limits, now).await?)?;
        }
        Command::ClearOwnerLimits { owner } => {
            let cleared = manager.set_owner_limits(&owner, OwnerLimits::new(), now);
            print_event(&cleared.await?)?;
        }
        Command::Expiring { within } => expiring(&manager, within, now).await?,
        Command::Usage { id, since } => usage(&manager, &id, since, now).await?,
        Command::Show { id } => {
            let key = manager
                .get(&id)
                .await?
                .ok_or_else(|| format!("no key {id}"))?;
            show(&key, now);
            show_limits(&manager.allowance(&id, now).await?);
        }
        Command::Renew { id } => {
            let (token, event) = manager.renew(&id, now, &mut rng).await?;
            print_event(&event)?;
            println!("new token: {}", token.expose_secret());
            eprintln!("warning: copy the new token now; it will not be shown again");
            eprintln!(
                "the old token keeps working until you run `finalize`, `delete-old` or `undo`"
            );
        }
        Command::Finalize { id, delete_old } => {
            print_event(&manager.finalize(&id, delete_old, now).await?)?;
        }
        Command::DeleteOld { id, if_idle: None } => {
            print_event(&manager.delete_old(&id, now).await?)?;
        }
        Command::DeleteOld {
            id,
            if_idle: Some(min_idle),
        } => {
            print_event(&manager.delete_old_if_idle(&id, min_idle, now).await?)?;
        }
        Command::Housekeep => {
            let events = manager.housekeep_all(now).await?;
            for event in &events {
                print_event(event)?;
            }
            eprintln!("{} old token(s) deleted on schedule", events.len());
        }
        Command::Undo { id } => print_event(&manager.undo_renewal(&id, now).await?)?,
        Command::Delete { id } => print_event(&manager.delete_key(&id, now).await?)?,
        Command::Revoke { id } => {
            let token = token_from_stdin()?;
            let revoked = match &id {
                Some(id) => {
                    manager
                        .revoke_token(Credentials::bearer(&token).with_id(id), now)
                        .await?
                }
                None => manager.revoke_token(token.as_str(), now).await?,
            };
            match revoked {
                Some(event) => print_event(&event)?,
                None => return Err("not a live token of any key: nothing was revoked".into()),
            }
        }
        Command::Notices { limit } => notices(manager.store(), limit).await?,
        Command::Events { id, limit } => {
            println!("{:<12} {:<22} {:<16} DELIVERY", "ID", "EVENT", "AT");
            for entry in manager.store().outbox_of(id.as_str(), None, limit).await? {
                let delivery = match entry.state {
                    EntryState::Delivered => entry.delivered_at.map(date).unwrap_or_default(),
                    EntryState::Parked => {
                        format!("parked: {}", entry.last_error.unwrap_or_default())
                    }
                    _ => format!("pending, {} failed attempts", entry.attempts),
                };
                let (id, name) = (entry.id.to_string(), entry.event.name());
                println!(
                    "{id:<12} {name:<22} {:<16} {delivery}",
                    date(entry.event.at())
                );
            }
        }
        Command::RetryDelivery { id } => {
            let id = entry_id(&id)?;
            if !manager.retry_parked(id, now).await? {
                return Err(format!("{id} is not parked (keyctl notices lists them)").into());
            }
            println!("{id} is pending again");
        }
        Command::RestoreBootstrap => {
            let store = manager.store();
            match store.marker(BOOTSTRAP_RETIRED).await? {
                None => println!("the bootstrap token has not retired: nothing to restore"),
                Some(retired) => {
                    store.set_marker(BOOTSTRAP_RETIRED, None).await?;
                    eprintln!(
                        "audit: bootstrap_restored at {} by {} (it had retired at {})",
                        rfc3339(now),
                        whoami(),
                        rfc3339(retired)
                    );
                    println!(
                        "the bootstrap token acts again, until an active key holds the admin scope"
                    );
                }
            }
        }
        Command::Set { .. }
        | Command::SetScopes { .. }
        | Command::SetMeta { .. }
        | Command::SetExpiry { .. }
        | Command::SetLabel { .. }
        | Command::SetOwner { .. }
        | Command::SetRateLimit { .. }
        | Command::SetCredits { .. }
        | Command::Activate { .. }
        | Command::Deactivate { .. } => unreachable!("applied above, as a Change"),
        Command::Whois | Command::Migrate { .. } => {
            unreachable!("answered before the database is opened")
        }
        Command::Verify { id, from } => {
            let token = token_from_stdin()?;
            let mut credentials = Credentials::bearer(&token).with_id(&id);
            if let Some(ip) = from {
                credentials = credentials.from_ip(ip);
            }
            let authenticated = manager.authenticate(credentials, now).await;
            // The use and its outcome, refused or not, are noted in memory:
            // write them before the process ends.
            manager.flush_usage(now).await?;
            let matched = authenticated?.matched;
            let key = manager
                .get(&id)
                .await?
                .ok_or_else(|| format!("no key {id}"))?;
            let state = match key.state() {
                RenewalState::Renewing { .. } => " (a renewal is pending)",
                _ => "",
            };
            println!("valid: {matched} token{state}");
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let (cli, settings) = match parse_cli() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("keyctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Warnings of the stores (a PostgreSQL connection without TLS), on
    // stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .init();
    match run(cli, settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyctl: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sparkline;

    #[test]
    fn sparklines_scale_to_the_busiest_hour() {
        assert_eq!(sparkline(&[0, 1, 4, 8, 2]), " ▁▄█▂");
        assert_eq!(sparkline(&[0, 0]), "  ");
        assert_eq!(sparkline(&[5]), "█");
        assert_eq!(sparkline(&[]), "");
        assert_eq!(sparkline(&[u64::MAX, 1]), "█▁");
    }
}
