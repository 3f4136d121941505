//! The admin API's handlers: one per manager operation, each documented
//! for the OpenAPI document by its `#[utoipa::path]`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use keyroll::meter::{Credits, RateLimit};
use keyroll::outbox::{Entry, EntryId, EntryState};
use keyroll::store::KeyStore;
use keyroll::{
    Change, Event, KeyId, ManagerError, Metadata, NewKey, OldTokenDeletion, OwnerId, OwnerLimits,
    Scopes, Token,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use utoipa::{IntoParams, IntoResponses, ToSchema};

use super::auth::{Actor, AdminState};
use super::summary::{AllowanceSummary, ExpiringSummary, KeySummary, UsageHour};
use crate::ApiError;
use crate::error::no_such_route;

type Admin<S> = State<Arc<AdminState<S>>>;

/// The body of every refusal: `{"error": code, "message": text}`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// A code: `bad_request`, `not_found`, `conflict`, `unavailable`, ...
    error: String,
    /// What was refused, and the way out.
    message: String,
}

/// The refusals every admin route may answer.
#[derive(IntoResponses)]
#[allow(dead_code)] // a description for the document, never built
pub(crate) enum Refusals {
    /// Bad input, quoted.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No credentials, or credentials refused.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The key lacks the admin scope.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such key.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The key's state does not allow it, or it changed meanwhile.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The store failed; try again later.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// A new token, shown this once.
#[derive(Serialize, ToSchema)]
pub(crate) struct IssuedToken {
    /// The key's id.
    id: String,
    /// The token: store it now, it is not shown again.
    #[serde(serialize_with = "expose")]
    #[schema(value_type = String)]
    token: Token,
    /// The token's id (not a secret).
    token_id: String,
    /// The audit event.
    #[schema(value_type = Object)]
    event: Event,
}

/// The audit event of a change.
#[derive(Serialize, ToSchema)]
pub(crate) struct Done {
    /// The event.
    #[schema(value_type = Object)]
    event: Event,
}

/// A key with what its limits allow now.
#[derive(Serialize, ToSchema)]
pub(crate) struct KeyDetails {
    #[serde(flatten)]
    key: KeySummary,
    /// What its limits allow now.
    allowance: AllowanceSummary,
    /// What the limits its owner's keys share allow now, if it has an
    /// owner with limits.
    owner_allowance: Option<AllowanceSummary>,
}

/// An owner: the limits its keys share, what they allow now, its keys,
/// and their usage summed by hour.
#[derive(Serialize, ToSchema)]
pub(crate) struct OwnerDetails {
    /// The owner's id.
    owner: String,
    /// The limits its keys share (`null`: never set).
    limits: Option<OwnerLimitsSummary>,
    /// What they allow now (`null`: no limits).
    allowance: Option<AllowanceSummary>,
    /// Its keys, in id order (the first 500).
    keys: Vec<KeySummary>,
    /// Whether it has more keys than listed.
    more_keys: bool,
    /// The usage of all its keys, summed by UTC hour, oldest first.
    usage: Vec<UsageHour>,
}

/// An owner's limits as stored.
#[derive(Serialize, ToSchema)]
pub(crate) struct OwnerLimitsSummary {
    /// The rate limit its keys share: `{"limit": 100, "period": "1m",
    /// "burst": 20}`.
    #[schema(value_type = Option<Object>)]
    rate_limit: Option<RateLimit>,
    /// The credits its keys share: `{"remaining": 1000, "refill":
    /// {"amount": 1000, "every": "30d"}}`.
    #[schema(value_type = Option<Object>)]
    credits: Option<Credits>,
    /// When the credits were set (their balance counts from then).
    #[serde(with = "time::serde::rfc3339::option")]
    credits_set_at: Option<OffsetDateTime>,
    /// The setting's version: one more for each change, clearing included.
    version: u64,
}

/// The limits an owner's keys share: a rate limit, credits, or both
/// (`{}` clears them, as `DELETE` does).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetOwnerLimits {
    /// `{"limit": 100, "period": "1m", "burst": 20}`.
    #[schema(value_type = Option<Object>)]
    rate_limit: Option<RateLimit>,
    /// `{"remaining": 1000, "refill": {"amount": 1000, "every": "30d"}}`:
    /// setting the same credits again keeps their balance, other credits
    /// start it over.
    #[schema(value_type = Option<Object>)]
    credits: Option<Credits>,
}

/// A page of keys.
#[derive(Serialize, ToSchema)]
pub(crate) struct KeyPage {
    /// The keys, in id order.
    keys: Vec<KeySummary>,
    /// The `after` of the next page, if there may be one.
    next: Option<String>,
}

/// A page of the keys a search found, and how many it found.
#[derive(Serialize, ToSchema)]
pub(crate) struct Found {
    /// The page, in the order asked.
    keys: Vec<KeySummary>,
    /// How many keys match.
    total: usize,
}

/// Keys expiring or due soon, soonest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct ExpiringKeys {
    /// The keys.
    keys: Vec<ExpiringSummary>,
}

/// A key's usage, hour by hour (the hours with counts).
#[derive(Serialize, ToSchema)]
pub(crate) struct Usage {
    /// The key.
    id: String,
    /// Its hours, oldest first.
    hours: Vec<UsageHour>,
}

/// What revoking a token did.
#[derive(Serialize, ToSchema)]
pub(crate) struct Revoked {
    /// Whether it was a live token of a stored key, now revoked.
    revoked: bool,
    /// The audit event, if it was.
    #[schema(value_type = Option<Object>)]
    event: Option<Event>,
}

/// The events of the changes made, in order.
#[derive(Serialize, ToSchema)]
pub(crate) struct Changed {
    /// One event per change.
    #[schema(value_type = Vec<Object>)]
    events: Vec<Event>,
}

/// The deletions housekeeping applied.
#[derive(Serialize, ToSchema)]
pub(crate) struct Housekept {
    /// Their events.
    #[schema(value_type = Vec<Object>)]
    events: Vec<Event>,
}

/// A new key. Every field may be left out; any other field is a setting
/// by its name in a change (`"networks": "10.0.0.0/8"`).
#[derive(Deserialize, ToSchema)]
pub(crate) struct CreateKey {
    /// Its id; a random one when left out.
    id: Option<String>,
    /// Its label.
    #[serde(default)]
    label: String,
    /// What it may do.
    #[serde(default)]
    scopes: Vec<String>,
    /// Its metadata: an object of strings.
    #[serde(default, deserialize_with = "entries")]
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    metadata: Vec<(String, String)>,
    /// When it stops verifying (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
    /// Who owns it.
    owner: Option<String>,
    /// Its rate limit, in force from its first request: `{"limit": 100,
    /// "period": "1m", "burst": 20}`.
    #[schema(value_type = Option<Object>)]
    rate_limit: Option<RateLimit>,
    /// Its credits, in force from its first request: `{"remaining": 1000,
    /// "refill": {"amount": 1000, "every": "30d"}}`.
    #[schema(value_type = Option<Object>)]
    credits: Option<Credits>,
    /// Every other setting, as in a change: `"networks": "10.0.0.0/8"`.
    #[serde(flatten)]
    #[schema(additional_properties)]
    settings: serde_json::Map<String, serde_json::Value>,
}

/// What becomes of the old token: `now`, `later`, `at` (with `at`), or
/// `after_new_token_use` (with `grace`, as `1h`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Deletion {
    /// `now`, `later`, `at` or `after_new_token_use`.
    delete_old: DeletionChoice,
    /// With `at`: when (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    at: Option<OffsetDateTime>,
    /// With `after_new_token_use`: how long after the new token's first use.
    grace: Option<String>,
}

/// When the old token is deleted.
#[derive(Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DeletionChoice {
    /// Now: only the new token stays valid.
    Now,
    /// When deleted by hand (`DELETE /keys/{id}/old-token`).
    Later,
    /// At the instant `at`.
    At,
    /// `grace` after the new token's first recorded use.
    AfterNewTokenUse,
}

/// Query of `GET /keys`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct Page {
    /// The last id of the previous page.
    after: Option<String>,
    /// At most this many keys (1 to 500; 50 by default).
    limit: Option<usize>,
    /// Only this owner's keys.
    owner: Option<String>,
}

/// Query of `GET /search`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct Search {
    /// Text found in the key's id, label or owner, in any case (none:
    /// every key).
    q: Option<String>,
    /// `id` (the default), `last_used` (the latest first, never used
    /// last), `due` (the soonest renewal first) or `expiry` (the soonest
    /// first, keys without one last).
    sort: Option<String>,
    /// How many of the keys found to skip (0 by default).
    offset: Option<usize>,
    /// At most this many keys (1 to 500; 50 by default).
    limit: Option<usize>,
}

/// Query of a usage report.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct Since {
    /// How far back, as `7d` (the default) or `24h`.
    since: Option<String>,
}

/// Query of `GET /expiring`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct Within {
    /// The window, as `14d`.
    within: String,
}

/// `{"min_idle": "1h"}`: how long the old token must have gone unused.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MinIdle {
    min_idle: String,
}

/// `{"token": ".."}`: a token to revoke, in the body, never in a URL.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeToken {
    token: String,
}

// ---------------------------------------------------------------- input

/// A request body, or the 400 that says what is wrong with it.
fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(body)| body)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// A query, or the 400 that says what is wrong with it.
fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(query)| query)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// The id of a key that may be stored: one that only versions before 0.4
/// allowed (`.x`) still names its key, so that it can be read, renamed or
/// deleted. New keys take [`KeyId::new`]'s rule.
fn key_id(raw: &str) -> Result<KeyId, ApiError> {
    KeyId::existing(raw).map_err(ApiError::bad_request)
}

/// The duration `field` holds, as humantime reads it (`90s`, `1m`, `30d`).
fn duration(field: &str, text: &str) -> Result<Duration, ApiError> {
    humantime::parse_duration(text)
        .ok()
        .and_then(|d| Duration::try_from(d).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid {field} {text:?}: not a duration (use e.g. 90s, 1m, 30d)"
            ))
        })
}

/// A JSON object of strings as its entries, in order and with any key
/// given twice kept twice, so that `Metadata::new` refuses it by name (a
/// map would silently keep the last).
fn entries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of strings")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut all = Vec::new();
            while let Some(entry) = map.next_entry()? {
                all.push(entry);
            }
            Ok(all)
        }
    }
    d.deserialize_map(Entries)
}

impl Deletion {
    fn choice(&self) -> Result<OldTokenDeletion, ApiError> {
        match (self.delete_old, self.at, &self.grace) {
            (DeletionChoice::Now, None, None) => Ok(OldTokenDeletion::Now),
            (DeletionChoice::Later, None, None) => Ok(OldTokenDeletion::Later),
            (DeletionChoice::At, Some(at), None) => Ok(OldTokenDeletion::At(at)),
            (DeletionChoice::AfterNewTokenUse, None, grace) => {
                Ok(OldTokenDeletion::AfterNewTokenUse {
                    grace: grace
                        .as_deref()
                        .map(|grace| duration("grace", grace))
                        .transpose()?
                        .unwrap_or_default(),
                })
            }
            _ => Err(ApiError::bad_request(
                "`at` goes with \"delete_old\": \"at\" only, and `grace` with \
                 \"after_new_token_use\" only",
            )),
        }
    }
}

// ---------------------------------------------------------------- answers

/// An answer that carries a token: never to be cached.
type WithToken = ([(header::HeaderName, HeaderValue); 1], Json<IssuedToken>);

/// The new token in the answer that shows it once: the one place the
/// admin API writes a secret.
fn expose<S: serde::Serializer>(token: &Token, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(token.expose_secret())
}

/// The answer to a call that issued `token` (stored by then), and the
/// audit of `event` (a sink returns nothing: it cannot fail the answer).
fn with_token<S>(
    admin: &AdminState<S>,
    actor: &Actor,
    id: &KeyId,
    token: Token,
    event: Event,
) -> WithToken {
    let token_id = token.id().to_string();
    admin.audit(actor, &event);
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(IssuedToken {
            id: id.to_string(),
            token,
            token_id,
            event,
        }),
    )
}

impl<S> AdminState<S> {
    /// Answers a change with its event, and audits it.
    fn done(&self, actor: &Actor, event: Event) -> Json<Done> {
        self.audit(actor, &event);
        Json(Done { event })
    }

    /// Writes the uses noted so far, so that an answer shows them; a key
    /// that cannot be written holds up no answer (its uses are kept).
    async fn flush(&self, now: OffsetDateTime)
    where
        S: KeyStore,
    {
        if let Err(e) = self.keys.flush_usage(now).await {
            tracing::warn!(error = %e, "keyroll: writing noted uses failed");
        }
    }
}

/// The transitions that take only the key's id.
macro_rules! transition {
    ($(#[$doc:meta])* $name:ident, $method:ident, $verb:ident, $path:literal, $tag:literal) => {
        $(#[$doc])*
        #[utoipa::path($verb, path = $path, tag = $tag,
            params(("id" = String, Path, description = "The key's id")),
            responses((status = 200, body = Done), Refusals))]
        pub(crate) async fn $name<S: KeyStore + 'static>(
            State(admin): Admin<S>,
            Extension(actor): Extension<Actor>,
            Path(raw): Path<String>,
        ) -> Result<Json<Done>, ApiError> {
            let now = OffsetDateTime::now_utc();
            let event = admin.keys.$method(&key_id(&raw)?, now).await?;
            Ok(admin.done(&actor, event))
        }
    };
}

// ---------------------------------------------------------------- keys

/// Creates a key; its token is shown this once.
#[utoipa::path(post, path = "/keys", tag = "keys", request_body = CreateKey,
    responses((status = 201, description = "Created. The token is shown this once.",
        body = IssuedToken, headers(("cache-control" = String, description = "no-store"))),
        Refusals))]
pub(crate) async fn create_key<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Extension(actor): Extension<Actor>,
    new: Result<Json<CreateKey>, JsonRejection>,
) -> Result<(StatusCode, WithToken), ApiError> {
    let new = body(new)?;
    let mut rng = keyroll::os_rng();
    let id = match new.id {
        Some(raw) => KeyId::new(raw).map_err(ApiError::bad_request)?,
        None => KeyId::generate(&mut rng),
    };
    let scopes = Scopes::new(new.scopes).map_err(ApiError::bad_request)?;
    let mut key = NewKey::new(id.clone())
        .label(new.label)
        .scopes(scopes.clone())
        .metadata(Metadata::new(new.metadata).map_err(ApiError::bad_request)?);
    if let Some(at) = new.expires_at {
        key = key.expires_at(at);
    }
    if let Some(owner) = new.owner {
        key = key.owner(OwnerId::new(owner).map_err(ApiError::bad_request)?);
    }
    if let Some(rate) = new.rate_limit {
        key = key.rate_limit(rate);
    }
    if let Some(credits) = new.credits {
        key = key.credits(credits);
    }
    for (name, value) in new.settings {
        let change = serde_json::from_value(serde_json::json!({ &name: value })).map_err(|e| {
            ApiError::bad_request(format!(
                "invalid field `{name}`: {e}; a new key takes `id` and its settings"
            ))
        })?;
        key = key.with(change).map_err(ApiError::bad_request)?;
    }
    let now = OffsetDateTime::now_utc();
    let (token, event) = admin.keys.create_key(key, now, &mut rng).await?;
    admin.retire_bootstrap_for(&scopes, now).await;
    Ok((
        StatusCode::CREATED,
        with_token(&admin, &actor, &id, token, event),
    ))
}

/// Lists keys in id order, a page at a time; one owner's with `owner`.
#[utoipa::path(get, path = "/keys", tag = "keys", params(Page),
    responses((status = 200, body = KeyPage), Refusals))]
pub(crate) async fn list_keys<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Json<KeyPage>, ApiError> {
    let page = query(page)?;
    let after = page.after.as_deref().map(key_id).transpose()?;
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let now = OffsetDateTime::now_utc();
    admin.flush(now).await;
    let keys = match page.owner {
        Some(owner) => {
            let owner = OwnerId::existing(owner).map_err(ApiError::bad_request)?;
            admin.keys.list_owned(&owner, after.as_ref(), limit).await?
        }
        None => admin.keys.list(after.as_ref(), limit).await?,
    };
    let next = (keys.len() == limit)
        .then(|| keys.last().map(|k| k.id().to_string()))
        .flatten();
    Ok(Json(KeyPage {
        keys: keys.iter().map(|k| KeySummary::new(k, now)).collect(),
        next,
    }))
}

/// Searches every key by id, label and owner, sorted by id, last use, due
/// date or expiry, a page at a time, with how many match. It reads every
/// key (as `/expiring` does: about a second a million keys); `GET /keys`
/// pages in id order without reading them all.
#[utoipa::path(get, path = "/search", tag = "keys", params(Search),
    responses((status = 200, body = Found), Refusals))]
pub(crate) async fn search_keys<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    search: Result<Query<Search>, QueryRejection>,
) -> Result<Json<Found>, ApiError> {
    let search = query(search)?;
    let needle = search.q.unwrap_or_default().to_lowercase();
    let sort = search.sort.as_deref().unwrap_or("id");
    // What a found key is sorted by, after which its id breaks ties: the
    // instant as nanoseconds, turned so that "first" sorts low.
    let by: fn(&keyroll::ApiKey) -> Option<i128> = match sort {
        "id" => |_| None,
        "last_used" => |key| key.last_used_at().map(|at| -at.unix_timestamp_nanos()),
        "due" => |key| Some(key.current_token().due_at().unix_timestamp_nanos()),
        "expiry" => |key| key.expires_at().map(|at| at.unix_timestamp_nanos()),
        other => {
            return Err(ApiError::bad_request(format_args!(
                "unknown sort {other:?}: use id, last_used, due or expiry"
            )));
        }
    };
    let limit = search.limit.unwrap_or(50).clamp(1, 500);
    let offset = search.offset.unwrap_or(0);
    let now = OffsetDateTime::now_utc();
    admin.flush(now).await;
    let matches = |key: &keyroll::ApiKey| {
        let owner = key.owner().map_or("", OwnerId::as_str);
        [key.id().as_str(), key.label(), owner]
            .iter()
            .any(|text| text.to_lowercase().contains(&needle))
    };
    // Keys in id order, a page of `list` at a time: what is sorted is
    // kept, never the keys themselves.
    let (mut found, mut after) = (Vec::new(), None::<KeyId>);
    loop {
        let page = admin.keys.list(after.as_ref(), 500).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id().clone());
        found.extend(
            page.iter()
                .filter(|key| matches(key))
                .map(|key| (by(key), key.id().clone())),
        );
    }
    // None (never used, no expiry) sorts last.
    found.sort_by(|(a, a_id), (b, b_id)| match (a, b) {
        (Some(a), Some(b)) => a.cmp(b).then_with(|| a_id.cmp(b_id)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a_id.cmp(b_id),
    });
    let total = found.len();
    let mut keys = Vec::new();
    for (_, id) in found.into_iter().skip(offset).take(limit) {
        if let Some(key) = admin.keys.get(&id).await? {
            keys.push(KeySummary::new(&key, now));
        }
    }
    Ok(Json(Found { keys, total }))
}

/// A key, with what its limits allow now.
#[utoipa::path(get, path = "/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, body = KeyDetails), Refusals))]
pub(crate) async fn get_key<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Path(raw): Path<String>,
) -> Result<Json<KeyDetails>, ApiError> {
    let id = key_id(&raw)?;
    let now = OffsetDateTime::now_utc();
    admin.flush(now).await;
    let key = admin
        .keys
        .get(&id)
        .await?
        .ok_or(ManagerError::<S::Error>::NotFound)?;
    let allowance = admin.keys.allowance(&id, now).await?;
    Ok(Json(KeyDetails {
        key: KeySummary::new(&key, now),
        allowance: AllowanceSummary::from(&allowance),
        owner_allowance: allowance.owner().map(AllowanceSummary::from),
    }))
}

/// A key's usage by UTC hour (accepted, rate limited, usage exceeded,
/// refused), the hours with counts only.
#[utoipa::path(get, path = "/keys/{id}/usage", tag = "keys",
    params(("id" = String, Path, description = "The key's id"), Since),
    responses((status = 200, body = Usage), Refusals))]
pub(crate) async fn usage<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Path(raw): Path<String>,
    since: Result<Query<Since>, QueryRejection>,
) -> Result<Json<Usage>, ApiError> {
    let id = key_id(&raw)?;
    let since = duration("since", query(since)?.since.as_deref().unwrap_or("7d"))?;
    let now = OffsetDateTime::now_utc();
    admin.flush(now).await;
    let rows = admin
        .keys
        .usage(&id, now.saturating_sub(since), now + Duration::HOUR)
        .await?;
    Ok(Json(Usage {
        id: id.to_string(),
        hours: rows.iter().map(UsageHour::from).collect(),
    }))
}

/// The keys that expire, or whose token falls due, within the window,
/// soonest first (overdue renewals included).
#[utoipa::path(get, path = "/expiring", tag = "keys", params(Within),
    responses((status = 200, body = ExpiringKeys), Refusals))]
pub(crate) async fn expiring<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    within: Result<Query<Within>, QueryRejection>,
) -> Result<Json<ExpiringKeys>, ApiError> {
    let within = duration("within", &query(within)?.within)?;
    let now = OffsetDateTime::now_utc();
    let soon = admin.keys.expiring(within, now).await?;
    Ok(Json(ExpiringKeys {
        keys: soon.iter().map(|s| ExpiringSummary::new(s, now)).collect(),
    }))
}

// ---------------------------------------------------------------- owners

/// The id of an owner that may be stored (as [`key_id`]): one that only
/// versions before 0.4 allowed still names its keys.
fn owner_id(raw: &str) -> Result<OwnerId, ApiError> {
    OwnerId::existing(raw).map_err(ApiError::bad_request)
}

/// The most keys an owner's page lists.
const OWNER_KEYS: usize = 500;

/// An owner: the limits its keys share, what they allow now, its keys (the
/// first 500) and the usage of all its keys summed by UTC hour.
#[utoipa::path(get, path = "/owners/{owner}", tag = "owners",
    params(("owner" = String, Path, description = "The owner's id"), Since),
    responses((status = 200, body = OwnerDetails), Refusals))]
pub(crate) async fn get_owner<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Path(raw): Path<String>,
    since: Result<Query<Since>, QueryRejection>,
) -> Result<Json<OwnerDetails>, ApiError> {
    let owner = owner_id(&raw)?;
    let since = duration("since", query(since)?.since.as_deref().unwrap_or("7d"))?;
    let now = OffsetDateTime::now_utc();
    admin.flush(now).await;
    let limits = admin.keys.owner_limits(&owner).await?;
    let allowance = admin.keys.owner_allowance(&owner, now).await?;
    let (from, to) = (now.saturating_sub(since), now + Duration::HOUR);
    // Every key's counts, a page of keys at a time, summed by hour.
    let mut hours = std::collections::BTreeMap::<i64, keyroll::store::UsageRow>::new();
    let (mut keys, mut after) = (Vec::new(), None);
    loop {
        let page = admin
            .keys
            .list_owned(&owner, after.as_ref(), OWNER_KEYS)
            .await?;
        for key in &page {
            for row in admin.keys.usage(key.id(), from, to).await? {
                hours
                    .entry(row.hour)
                    .and_modify(|kept| kept.merge(&row))
                    .or_insert(row);
            }
        }
        after = page.last().map(|key| key.id().clone());
        let full = page.len() == OWNER_KEYS;
        keys.extend(page.iter().map(|key| KeySummary::new(key, now)));
        if !full {
            break;
        }
    }
    let more_keys = keys.len() > OWNER_KEYS;
    keys.truncate(OWNER_KEYS);
    Ok(Json(OwnerDetails {
        owner: owner.to_string(),
        limits: limits.map(|limits| OwnerLimitsSummary {
            rate_limit: limits.rate().copied(),
            credits: limits.credits_as_set().copied(),
            credits_set_at: limits.credits_set_at(),
            version: limits.version(),
        }),
        allowance: allowance.as_ref().map(AllowanceSummary::from),
        keys,
        more_keys,
        usage: hours.values().map(UsageHour::from).collect(),
    }))
}

/// Sets the limits an owner's keys share: a request of any of its keys is
/// admitted only if the key's own limits and these both admit it, and is
/// charged to both or neither.
#[utoipa::path(put, path = "/owners/{owner}/limits", tag = "owners",
    params(("owner" = String, Path, description = "The owner's id")),
    request_body = SetOwnerLimits, responses((status = 200, body = Done), Refusals))]
pub(crate) async fn set_owner_limits<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
    limits: Result<Json<SetOwnerLimits>, JsonRejection>,
) -> Result<Json<Done>, ApiError> {
    let owner = OwnerId::new(raw).map_err(ApiError::bad_request)?;
    let limits = body(limits)?;
    let mut set = OwnerLimits::new();
    if let Some(rate) = limits.rate_limit {
        set = set.rate_limit(rate);
    }
    if let Some(credits) = limits.credits {
        set = set.credits(credits);
    }
    let now = OffsetDateTime::now_utc();
    let event = admin.keys.set_owner_limits(&owner, set, now).await?;
    Ok(admin.done(&actor, event))
}

/// Clears the limits an owner's keys share: each key is then metered by
/// its own limits alone.
#[utoipa::path(delete, path = "/owners/{owner}/limits", tag = "owners",
    params(("owner" = String, Path, description = "The owner's id")),
    responses((status = 200, body = Done), Refusals))]
pub(crate) async fn clear_owner_limits<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
) -> Result<Json<Done>, ApiError> {
    let owner = owner_id(&raw)?;
    let now = OffsetDateTime::now_utc();
    let event = admin
        .keys
        .set_owner_limits(&owner, OwnerLimits::new(), now)
        .await?;
    Ok(admin.done(&actor, event))
}

// ---------------------------------------------------------------- renewal

/// Renews the key's token: the new token is shown this once; the old one
/// stays valid until deleted. With a body, also decides its deletion.
#[utoipa::path(post, path = "/keys/{id}/renew", tag = "renewal",
    params(("id" = String, Path, description = "The key's id")),
    request_body(content = Option<Deletion>, description = "What becomes of the old token (later, when left out)"),
    responses((status = 200, description = "Renewed. The token is shown this once.",
        body = IssuedToken, headers(("cache-control" = String, description = "no-store"))),
        Refusals))]
pub(crate) async fn renew<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
    deletion: Bytes,
) -> Result<WithToken, ApiError> {
    let id = key_id(&raw)?;
    let now = OffsetDateTime::now_utc();
    let mut rng = keyroll::os_rng();
    let (token, event) = if deletion.iter().all(u8::is_ascii_whitespace) {
        admin.keys.renew(&id, now, &mut rng).await?
    } else {
        let deletion: Deletion =
            serde_json::from_slice(&deletion).map_err(ApiError::bad_request)?;
        admin
            .keys
            .renew_with(&id, deletion.choice()?, now, &mut rng)
            .await?
    };
    Ok(with_token(&admin, &actor, &id, token, event))
}

/// Decides what becomes of the old token of a pending renewal.
#[utoipa::path(post, path = "/keys/{id}/finalize", tag = "renewal",
    params(("id" = String, Path, description = "The key's id")),
    request_body = Deletion, responses((status = 200, body = Done), Refusals))]
pub(crate) async fn finalize<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
    deletion: Result<Json<Deletion>, JsonRejection>,
) -> Result<Json<Done>, ApiError> {
    let deletion = body(deletion)?.choice()?;
    let now = OffsetDateTime::now_utc();
    let event = admin.keys.finalize(&key_id(&raw)?, deletion, now).await?;
    Ok(admin.done(&actor, event))
}

transition!(
    /// Deletes the old token of a pending renewal now. It cannot be undone.
    delete_old, delete_old, delete, "/keys/{id}/old-token", "renewal"
);

/// Deletes the old token only if it has gone unused for `min_idle`
/// (409 otherwise).
#[utoipa::path(post, path = "/keys/{id}/old-token/delete-if-idle", tag = "renewal",
    params(("id" = String, Path, description = "The key's id")),
    request_body = MinIdle, responses((status = 200, body = Done), Refusals))]
pub(crate) async fn delete_old_if_idle<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
    min_idle: Result<Json<MinIdle>, JsonRejection>,
) -> Result<Json<Done>, ApiError> {
    let min_idle = duration("min_idle", &body(min_idle)?.min_idle)?;
    let now = OffsetDateTime::now_utc();
    let event = admin
        .keys
        .delete_old_if_idle(&key_id(&raw)?, min_idle, now)
        .await?;
    Ok(admin.done(&actor, event))
}

transition!(
    /// Undoes a pending renewal: the old token becomes current again and
    /// the new one is deleted.
    undo_renewal, undo_renewal, post, "/keys/{id}/undo-renewal", "renewal"
);

/// Applies the key's scheduled deletion of its old token, if it is due.
#[utoipa::path(post, path = "/keys/{id}/housekeep", tag = "renewal",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, body = Housekept), Refusals))]
pub(crate) async fn housekeep<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
) -> Result<Json<Housekept>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let events: Vec<Event> = admin
        .keys
        .housekeep(&key_id(&raw)?, now)
        .await?
        .into_iter()
        .collect();
    events.iter().for_each(|e| admin.audit(&actor, e));
    Ok(Json(Housekept { events }))
}

/// Applies every key's due deletion, and drops usage counts older than
/// the retention.
#[utoipa::path(post, path = "/housekeep", tag = "renewal",
    responses((status = 200, body = Housekept), Refusals))]
pub(crate) async fn housekeep_all<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Housekept>, ApiError> {
    let events = admin.keys.housekeep_all(OffsetDateTime::now_utc()).await?;
    events.iter().for_each(|e| admin.audit(&actor, e));
    Ok(Json(Housekept { events }))
}

// ---------------------------------------------------------------- outbox

/// The outbox: how many entries are pending and parked, and a page of
/// the entries in one state.
#[derive(Serialize, ToSchema)]
pub(crate) struct OutboxPage {
    /// Entries not delivered yet.
    pending: u64,
    /// Entries given up on after repeated failures.
    parked: u64,
    /// The page: `id`, `event`, `state`, `attempts`, `next_attempt_at`,
    /// `last_error`, `delivered_at`.
    #[schema(value_type = Vec<Object>)]
    entries: Vec<Entry>,
}

/// Query of `GET /outbox`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct OutboxQuery {
    /// `parked` (the default), `pending` or `delivered`.
    state: Option<String>,
    /// The last id of the previous page.
    after: Option<u64>,
    /// At most this many entries (1 to 500; 50 by default).
    limit: Option<usize>,
}

/// Whether a parked entry was put back to pending.
#[derive(Serialize, ToSchema)]
pub(crate) struct Retried {
    /// The entry, due now.
    id: u64,
}

/// The outbox's counts, and a page of its entries in one state (parked
/// by default: the deliveries given up on, with their last error).
#[utoipa::path(get, path = "/outbox", tag = "outbox", params(OutboxQuery),
    responses((status = 200, body = OutboxPage), Refusals))]
pub(crate) async fn outbox<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    page: Result<Query<OutboxQuery>, QueryRejection>,
) -> Result<Json<OutboxPage>, ApiError> {
    let page = query(page)?;
    let state = match page.state.as_deref().unwrap_or("parked") {
        "parked" => EntryState::Parked,
        "pending" => EntryState::Pending,
        "delivered" => EntryState::Delivered,
        other => {
            return Err(ApiError::bad_request(format_args!(
                "unknown state {other:?}: use parked, pending or delivered"
            )));
        }
    };
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let store = admin.keys.store();
    let failed = |e| ApiError::from(ManagerError::Store(e));
    let counts = store.outbox_counts().await.map_err(failed)?;
    let entries = store
        .outbox(state, page.after.map(EntryId::new), limit)
        .await
        .map_err(failed)?;
    Ok(Json(OutboxPage {
        pending: counts.pending,
        parked: counts.parked,
        entries,
    }))
}

/// A key's recent events, newest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct KeyEvents {
    /// The key's id.
    id: String,
    /// Its outbox entries, delivered or not (as `GET /outbox` lists
    /// them); older ones with `before` set to the last id.
    #[schema(value_type = Vec<Object>)]
    entries: Vec<Entry>,
}

/// Query of `GET /keys/{id}/events`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// The last id of the previous page: older entries only.
    before: Option<u64>,
    /// At most this many entries (1 to 500; 20 by default).
    limit: Option<usize>,
}

/// A key's events from the outbox, newest first, delivered or not, until
/// delivered ones are pruned; a deleted key's too. Empty when the outbox
/// is off.
#[utoipa::path(get, path = "/keys/{id}/events", tag = "outbox",
    params(("id" = String, Path, description = "The key's id"), EventsQuery),
    responses((status = 200, body = KeyEvents), Refusals))]
pub(crate) async fn key_events<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Path(raw): Path<String>,
    page: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<KeyEvents>, ApiError> {
    let id = key_id(&raw)?;
    let page = query(page)?;
    let limit = page.limit.unwrap_or(20).clamp(1, 500);
    let entries = admin
        .keys
        .store()
        .outbox_of(id.as_str(), page.before.map(EntryId::new), limit)
        .await
        .map_err(|e| ApiError::from(ManagerError::Store(e)))?;
    Ok(Json(KeyEvents {
        id: id.to_string(),
        entries,
    }))
}

/// Puts a parked entry back to pending, due now, with no failed
/// attempts: the dispatcher delivers it again.
#[utoipa::path(post, path = "/outbox/{id}/retry", tag = "outbox",
    params(("id" = String, Path, description = "The entry's id: `12`, or `evt_12` as its webhook-id")),
    responses((status = 200, body = Retried), Refusals))]
pub(crate) async fn retry_entry<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Path(raw): Path<String>,
) -> Result<Json<Retried>, ApiError> {
    let id = raw
        .strip_prefix("evt_")
        .unwrap_or(&raw)
        .parse::<u64>()
        .map_err(|_| {
            ApiError::bad_request(format_args!("{raw:?} is no entry id: give 12 or evt_12"))
        })?;
    if !admin
        .keys
        .retry_parked(EntryId::new(id), OffsetDateTime::now_utc())
        .await?
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_parked",
            format!("no parked entry {id}"),
        ));
    }
    Ok(Json(Retried { id }))
}

// ---------------------------------------------------------------- tokens

/// Revokes a leaked token, whatever its key's state. The token goes in
/// the body, never in a URL; `revoked` is false for anything that is not
/// a live token of a stored key.
#[utoipa::path(post, path = "/tokens/revoke", tag = "tokens", request_body = RevokeToken,
    responses((status = 200, body = Revoked), Refusals))]
pub(crate) async fn revoke_token<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Extension(actor): Extension<Actor>,
    revoke: Result<Json<RevokeToken>, JsonRejection>,
) -> Result<Json<Revoked>, ApiError> {
    // Never quote the body: it holds a token.
    let revoke =
        revoke.map_err(|_| ApiError::bad_request("the body must be {\"token\": \"...\"}"))?;
    let event = admin
        .keys
        .revoke_token(revoke.token.as_str(), OffsetDateTime::now_utc())
        .await?;
    if let Some(event) = &event {
        admin.audit(&actor, event);
    }
    Ok(Json(Revoked {
        revoked: event.is_some(),
        event,
    }))
}

// ---------------------------------------------------------------- status

transition!(
    /// Deletes the key and its tokens, meter and usage counts.
    delete_key, delete_key, delete, "/keys/{id}", "keys"
);

// ---------------------------------------------------------------- changes

/// Changes a key's settings or status: a list of changes, made in order in
/// one write, all or none (`keyroll::Change` as JSON). Each change is an
/// object of one field named after the setting (`{"label": "orders"}`,
/// `{"scopes": ["orders:read"]}`, `{"metadata": {"team": "shop"}}`,
/// `{"expiry": "2027-01-01T00:00:00Z"}` or `null`, `{"owner": "acme"}` or
/// `null`, `{"rate_limit": {"limit": 100, "period": "1m", "burst": 20}}` or
/// `null`, `{"credits": {"remaining": 1000, "refill": {"amount": 1000,
/// "every": "30d"}}}` or `null`, `{"networks": "10.0.0.0/8,2001:db8::/32"}`
/// or `null`), or `"activate"` / `"deactivate"`.
#[utoipa::path(patch, path = "/keys/{id}", tag = "settings",
    params(("id" = String, Path, description = "The key's id")),
    request_body(content = Vec<Object>, description = "The changes, in order (keyroll::Change)"),
    responses((status = 200, body = Changed), Refusals))]
pub(crate) async fn change_key<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
    changes: Result<Json<Vec<Change>>, JsonRejection>,
) -> Result<Json<Changed>, ApiError> {
    let changes = body(changes)?;
    let events = admin.apply(&actor, &key_id(&raw)?, changes).await?;
    Ok(Json(Changed { events }))
}

/// Sets one setting, named by the path, to the change in the body:
/// `PUT /keys/{id}/label` with `{"label": "orders"}` (`rate-limit` for
/// `rate_limit`), as one change of `PATCH /keys/{id}` would.
#[utoipa::path(put, path = "/keys/{id}/{change}", tag = "settings",
    params(("id" = String, Path, description = "The key's id"),
        ("change" = String, Path, description = "The setting, by its name in a change, `_` as \
            `-`: label, scopes, metadata, expiry, owner, rate-limit, credits, networks, ...")),
    request_body(content = Object, description = "The change: `{\"label\": \"orders\"}`"),
    responses((status = 200, body = Done), Refusals))]
pub(crate) async fn set<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Extension(actor): Extension<Actor>,
    Path((raw, named)): Path<(String, String)>,
    change: Result<Json<Change>, JsonRejection>,
) -> Result<Json<Done>, ApiError> {
    let change = body(change)?;
    let named = named.replace('-', "_");
    if change.name() != named {
        return Err(ApiError::bad_request(format!(
            "the path names {named}: send {{\"{named}\": ...}}"
        )));
    }
    admin.apply_one(&actor, &raw, change).await
}

/// Activates (`POST /keys/{id}/activate`) or deactivates
/// (`/deactivate`) the key.
#[utoipa::path(post, path = "/keys/{id}/{change}", tag = "keys",
    params(("id" = String, Path, description = "The key's id"),
        ("change" = String, Path, description = "`activate` or `deactivate`")),
    responses((status = 200, body = Done), Refusals))]
pub(crate) async fn set_status<S: KeyStore + 'static>(
    State(admin): Admin<S>,
    Extension(actor): Extension<Actor>,
    Path((raw, status)): Path<(String, String)>,
) -> Result<Json<Done>, ApiError> {
    let change = match status.as_str() {
        "activate" => Change::Activate,
        "deactivate" => Change::Deactivate,
        _ => return Err(no_such_route()),
    };
    admin.apply_one(&actor, &raw, change).await
}

impl<S: KeyStore> AdminState<S> {
    /// Makes `changes` of key `id` in one write, audits their events, and
    /// retires the bootstrap token if they made the key an active admin
    /// key.
    async fn apply(
        &self,
        actor: &Actor,
        id: &KeyId,
        changes: Vec<Change>,
    ) -> Result<Vec<Event>, ApiError> {
        let now = OffsetDateTime::now_utc();
        // Only these can make the key an active admin key: the others
        // need no second read.
        let may_admit = changes
            .iter()
            .any(|c| matches!(c, Change::Scopes(_) | Change::Activate));
        let events = self.keys.apply_all(id, changes, now).await?;
        if may_admit
            && let Some(key) = self.keys.get(id).await?
            && key.status() == keyroll::KeyStatus::Active
        {
            self.retire_bootstrap_for(key.scopes(), now).await;
        }
        events.iter().for_each(|event| self.audit(actor, event));
        Ok(events)
    }

    /// [`apply`](Self::apply) of one change of the key `raw` names.
    async fn apply_one(
        &self,
        actor: &Actor,
        raw: &str,
        change: Change,
    ) -> Result<Json<Done>, ApiError> {
        let mut events = self.apply(actor, &key_id(raw)?, vec![change]).await?;
        Ok(Json(Done {
            event: events.remove(0),
        }))
    }
}
