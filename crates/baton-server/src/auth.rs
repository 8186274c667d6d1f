//! Who may do what: bearer tokens with roles (stored as SHA-256 hashes, never in
//! clear, compared in constant time), optional HS256 JWTs (no other `alg`), a limit on
//! failed authentications per client, and a rate limit on job creation.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::{AppState, ServerOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads, submits and controls jobs.
    Operator,
    /// Everything, including deletes, schedules and pipelines.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// A configured token: its SHA-256 (hex) and role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub sha256: String,
    pub role: Role,
    /// When set, the token's role applies to jobs of these queues only: it reads
    /// everything, but submits and controls only their jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    pub tokens: Vec<TokenEntry>,
    /// Accept HS256 JWTs signed with this secret; their `role` claim names the role.
    pub jwt_secret: Option<String>,
}

impl AuthConfig {
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty() || self.jwt_secret.is_some()
    }
}

/// The hex SHA-256 of a token, as it is written in the configuration.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Who made a request; handlers that check more (the WebSocket's commands) read it.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// The queues the caller's role is narrowed to; `None` for all.
    pub queues: Option<Vec<String>>,
}

impl Caller {
    /// Refuses (403) a change to a job of `queue` by a caller narrowed to others.
    pub fn check_queue(&self, queue: &str) -> Result<(), ApiError> {
        match &self.queues {
            Some(queues) if !queues.iter().any(|q| q == queue) => {
                Err(ApiError::forbidden(format!(
                    "token {:?} is limited to queues {queues:?}; queue {queue:?} is not one of them",
                    self.name
                )))
            }
            _ => Ok(()),
        }
    }
}

/// How often the rate limiter forgets idle clients.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Failed authentications a client may make within [`FAILURE_WINDOW`]; past them
/// every request of that client that needs a token is answered 429 until the window
/// ends, whatever its token, so that guessing cannot go on.
pub const MAX_AUTH_FAILURES: u32 = 10;
/// See [`MAX_AUTH_FAILURES`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Clients whose failures are remembered at once, at most; past it the windows that
/// ended are forgotten first.
const MAX_FAILING_CLIENTS: usize = 100_000;

/// Failed authentications per client, in fixed windows.
#[derive(Default)]
struct Failures {
    clients: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Failures {
    /// How long the client must still wait when it has failed too often.
    fn blocked(&self, client: IpAddr) -> Option<Duration> {
        let clients = self.clients.lock().ok()?;
        let (since, count) = clients.get(&client)?;
        let left = FAILURE_WINDOW.checked_sub(since.elapsed())?;
        (*count >= MAX_AUTH_FAILURES && !left.is_zero()).then_some(left)
    }

    fn record(&self, client: IpAddr) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        if clients.len() >= MAX_FAILING_CLIENTS {
            clients.retain(|_, (since, _)| since.elapsed() < FAILURE_WINDOW);
        }
        let entry = clients.entry(client).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= FAILURE_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }

    fn prune(&self) {
        if let Ok(mut clients) = self.clients.lock() {
            clients.retain(|_, (since, _)| since.elapsed() < FAILURE_WINDOW);
            clients.shrink_to_fit();
        }
    }
}

/// The client a failure is counted against: its address, an IPv6 one by its /64 (one
/// host usually has all of them); a request without one (in process) is loopback.
fn client_of(req: &Request) -> IpAddr {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip().to_canonical());
    match ip {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// Whether two digests are equal, in a time that does not depend on where they differ.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

pub struct Auth {
    pub(crate) config: AuthConfig,
    /// The configured tokens' SHA-256, decoded, beside `config.tokens`.
    digests: Vec<[u8; 32]>,
    failures: Failures,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl Auth {
    pub fn new(options: &ServerOptions) -> Self {
        let limiter = NonZeroU32::new(options.submit_rate).map(|rate| {
            let burst = NonZeroU32::new(options.submit_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        // The configuration checked the digests; one that is not hex matches nothing.
        let digests = options
            .auth
            .tokens
            .iter()
            .map(|t| {
                let mut d = [0u8; 32];
                if hex::decode_to_slice(&t.sha256, &mut d).is_err() {
                    d = [0; 32];
                }
                d
            })
            .collect();
        Self {
            config: options.auth.clone(),
            digests,
            failures: Failures::default(),
            limiter,
        }
    }

    /// Forgets the clients whose allowance is full again (they look like new ones), so
    /// that the limiter holds only clients seen within about `burst / rate` seconds,
    /// however many addresses come and go; the number of clients it still holds.
    pub fn prune(&self) -> usize {
        self.failures.prune();
        match &self.limiter {
            Some(limiter) => {
                limiter.retain_recent();
                limiter.shrink_to_fit();
                limiter.len()
            }
            None => 0,
        }
    }

    /// Prunes the limiter every [`PRUNE_EVERY`] until `stop`, or until the server is
    /// gone.
    pub fn prune_in_background(auth: &Arc<Auth>, stop: tokio_util::sync::CancellationToken) {
        if auth.limiter.is_none() && !auth.config.enabled() {
            return;
        }
        let auth = Arc::downgrade(auth);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRUNE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                let Some(auth) = auth.upgrade() else { return };
                let held = auth.prune();
                tracing::trace!(held, "rate limiter pruned");
            }
        });
    }

    fn identify(&self, token: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every token is compared, in constant time, whichever matches.
        let mut found = None;
        for (i, d) in self.digests.iter().enumerate() {
            if same_digest(d, &digest) && found.is_none() {
                found = Some(i);
            }
        }
        if let Some(t) = found.map(|i| &self.config.tokens[i]) {
            return Some(Caller {
                name: t.name.clone(),
                role: t.role,
                queues: t.queues.clone(),
            });
        }
        let secret = self.config.jwt_secret.as_deref()?;
        verify_jwt(token, secret.as_bytes())
    }
}

/// The role a request needs.
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    // The dashboard's files hold no data: its pages ask the API with the person's token.
    if matches!(path, "/healthz" | "/readyz")
        || (*method == Method::GET && crate::dashboard::is_asset_path(path))
    {
        return None;
    }
    // A preview reads: it stores nothing.
    if *method == Method::GET
        || *method == Method::HEAD
        || *method == Method::OPTIONS
        || (*method == Method::POST && path == "/api/schedule-preview")
    {
        return Some(Role::Viewer);
    }
    let admin_area = path.starts_with("/api/schedules") || path.starts_with("/api/pipelines");
    if *method == Method::DELETE || (admin_area && !path.ends_with("/trigger")) {
        return Some(Role::Admin);
    }
    Some(Role::Operator)
}

/// Whether the submit rate limit applies to a request (it creates jobs).
pub fn rate_limited(method: &Method, path: &str) -> bool {
    *method == Method::POST && matches!(path, "/api/jobs" | "/api/workflows" | BATCH_PATH)
}

/// The batch submit, whose jobs the rate limit counts one by one.
const BATCH_PATH: &str = "/api/jobs/batch";

/// A batch's place in the submit rate limit: the middleware cannot count its jobs
/// before the body is read, so it leaves the key here and the handler charges the
/// limiter with the number of jobs ([`Auth::charge`]).
#[derive(Clone, Debug)]
pub struct SubmitQuota {
    key: String,
}

impl Auth {
    /// Charges `n` jobs to the caller's submit allowance; the 429 to answer when the
    /// allowance is spent (with `Retry-After`), or when `n` is more than the burst
    /// ever allows (without: waiting would not help, a smaller batch would).
    pub fn charge(&self, quota: Option<&SubmitQuota>, n: usize) -> Option<Response> {
        let (Some(limiter), Some(quota)) = (&self.limiter, quota) else {
            return None;
        };
        let count = NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX))?;
        match limiter.check_key_n(&quota.key, count) {
            Ok(Ok(())) => None,
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Some(too_many(
                    &format!("too many jobs submitted ({n} in this batch); retry in {{}} s"),
                    wait,
                ))
            }
            Err(governor::InsufficientCapacity(burst)) => Some(
                ApiError::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "a batch of {n} jobs is more than this server's submit burst of {burst} jobs allows; send at most {burst} jobs per request"
                    ),
                )
                .into_response(),
            ),
        }
    }
}

pub async fn middleware(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let auth = &s.auth;
    let required = required_role(req.method(), req.uri().path());
    let mut caller = Caller {
        name: "anonymous".into(),
        role: Role::Admin,
        queues: None,
    };
    if let Some(required) = required
        && auth.config.enabled()
    {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .map(str::to_owned)
            // Browsers cannot set headers on EventSource or WebSocket: a query token.
            .or_else(|| req.extensions().get::<QueryToken>().map(|t| t.0.clone()));
        let Some(token) = token else {
            return unauthorized("missing bearer token: send Authorization: Bearer <token>");
        };
        let client = client_of(&req);
        if let Some(wait) = auth.failures.blocked(client) {
            return too_many(
                "too many failed authentications from this client; retry in {} s",
                wait,
            );
        }
        match auth.identify(&token) {
            None => {
                auth.failures.record(client);
                return unauthorized("invalid token");
            }
            Some(c) if c.role < required => {
                return ApiError::forbidden(format!(
                    "the {} role may not {} {}; it needs the {} role",
                    c.role.as_str(),
                    req.method(),
                    req.uri().path(),
                    required.as_str()
                ))
                .into_response();
            }
            Some(c) => {
                if c.queues.is_some()
                    && required > Role::Viewer
                    && let Err(e) = narrowed(&s, &c, req.method(), req.uri().path()).await
                {
                    return e.into_response();
                }
                caller = c;
            }
        }
    }
    if let Some(limiter) = &auth.limiter
        && rate_limited(req.method(), req.uri().path())
    {
        let key = if auth.config.enabled() {
            caller.name.clone()
        } else {
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string())
                .unwrap_or_else(|| "local".into())
        };
        if req.uri().path() == BATCH_PATH {
            req.extensions_mut().insert(SubmitQuota { key });
        } else if let Err(not_until) = limiter.check_key(&key) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return too_many("too many jobs submitted; retry in {} s", wait);
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// A 429 with `Retry-After`; `{}` in the message is the wait in whole seconds.
fn too_many(message: &str, wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        message.replace("{}", &secs.to_string()),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// A change by a caller narrowed to some queues: allowed only where the queue it acts
/// on is known (a job by id, a queue by name, or a submit or bulk action, whose handler
/// checks each job's queue); every other change (workflows, schedules) is refused.
async fn narrowed(s: &AppState, c: &Caller, method: &Method, path: &str) -> Result<(), ApiError> {
    if *method == Method::POST
        && matches!(
            path,
            "/api/jobs" | "/api/jobs/status" | "/api/jobs/bulk" | BATCH_PATH
        )
    {
        return Ok(());
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "jobs", id] | ["api", "jobs", id, _] => {
            let job = s.engine.get(id).await.map_err(ApiError::from)?;
            c.check_queue(&job.queue)
        }
        ["api", "queues", name, _] => c.check_queue(name),
        _ => Err(ApiError::forbidden(format!(
            "token {:?} is limited to queues {:?}; it may not {method} {path}",
            c.name,
            c.queues.as_deref().unwrap_or_default()
        ))),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::unauthorized(message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The `?token=` of a request, taken out of its query.
#[derive(Clone)]
struct QueryToken(String);

/// The outermost layer: moves `token` out of the query string (into [`QueryToken`])
/// before anything else sees the request, so that every endpoint takes `?token=`
/// whatever its own query rules, and no log line, metric or handler can see it.
pub async fn take_query_token(mut req: Request, next: Next) -> Response {
    if let Some((token, rest)) = split_token(req.uri().query()) {
        let mut parts = req.uri().clone().into_parts();
        let path = req.uri().path();
        let path_and_query = if rest.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{rest}")
        };
        match path_and_query.parse() {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(_) => return ApiError::bad_request("invalid query string").into_response(),
        }
        match axum::http::Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return ApiError::bad_request("invalid query string").into_response(),
        }
        if let Some(token) = token {
            req.extensions_mut().insert(QueryToken(token));
        }
    }
    next.run(req).await
}

/// Splits a query into its (last non-empty, decoded) `token` and the rest, in order;
/// `None` when it has no `token`.
fn split_token(query: Option<&str>) -> Option<(Option<String>, String)> {
    let query = query?;
    let is_token = |pair: &str| pair == "token" || pair.starts_with("token=");
    if !query.split('&').any(is_token) {
        return None;
    }
    let mut token = None;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        if is_token(pair) {
            let value = percent_decode(pair.strip_prefix("token=").unwrap_or(""));
            if !value.is_empty() {
                token = Some(value);
            }
        } else {
            rest.push(pair);
        }
    }
    Some((token, rest.join("&")))
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit() =>
            {
                let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(bytes[i + 1]) << 4 | hex(bytes[i + 2]));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Deserialize)]
struct JwtHeader {
    alg: String,
}

#[derive(Deserialize)]
struct JwtClaims {
    #[serde(default)]
    sub: Option<String>,
    role: Role,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    queues: Option<Vec<String>>,
}

/// Verifies an HS256 JWT and returns who it names; `None` for anything else.
fn verify_jwt(token: &str, secret: &[u8]) -> Option<Caller> {
    let mut parts = token.split('.');
    let (h, p, sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: JwtHeader = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    if header.alg != "HS256" {
        return None;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&URL_SAFE_NO_PAD.decode(sig).ok()?).ok()?;
    let claims: JwtClaims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()?;
    let now = chrono::Utc::now().timestamp();
    if claims.exp.is_some_and(|exp| exp <= now) || claims.nbf.is_some_and(|nbf| nbf > now) {
        return None;
    }
    Some(Caller {
        name: claims.sub.unwrap_or_else(|| "jwt".into()),
        role: claims.role,
        queues: claims.queues,
    })
}

/// Signs an HS256 JWT (for tests and for `baton token jwt`).
pub fn sign_jwt(claims: &serde_json::Value, secret: &[u8]) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{h}.{p}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwts_are_verified() {
        let secret = b"s3cret";
        let exp = chrono::Utc::now().timestamp() + 60;
        let good = sign_jwt(
            &serde_json::json!({"sub": "ci", "role": "operator", "exp": exp}),
            secret,
        );
        let c = verify_jwt(&good, secret).expect("valid");
        assert_eq!((c.name.as_str(), c.role), ("ci", Role::Operator));
        assert!(verify_jwt(&good, b"other").is_none(), "wrong secret");
        let expired = sign_jwt(&serde_json::json!({"role": "admin", "exp": 1}), secret);
        assert!(verify_jwt(&expired, secret).is_none(), "expired");
        let mut tampered = good.clone();
        tampered.insert(good.find('.').unwrap() + 2, 'x');
        assert!(verify_jwt(&tampered, secret).is_none(), "tampered");
        assert!(verify_jwt("a.b", secret).is_none());
    }

    #[test]
    fn the_query_token_is_taken_out_of_the_query() {
        let split = |q: &str| split_token(Some(q));
        assert_eq!(split("state=queued&limit=2"), None);
        assert_eq!(split("tokens=1"), None);
        assert_eq!(
            split("token=abc"),
            Some((Some("abc".to_owned()), String::new()))
        );
        assert_eq!(
            split("state=queued&token=a%2Bb%3D+c&limit=2"),
            Some((Some("a+b= c".to_owned()), "state=queued&limit=2".to_owned()))
        );
        assert_eq!(
            split("token=&after=3&token"),
            Some((None, "after=3".to_owned()))
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn the_limiter_forgets_idle_clients() {
        // Two a second, no burst: the limiter forgets a client about a second after it
        // submitted (its allowance is full again, and governor keeps one more interval).
        let options = ServerOptions {
            submit_rate: 2,
            submit_burst: 1,
            ..ServerOptions::default()
        };
        let auth = Auth::new(&options);
        let limiter = auth.limiter.as_ref().unwrap();
        for i in 0..20_000u32 {
            let addr = std::net::Ipv6Addr::from(u128::from(i) << 16 | 0xbeef);
            assert!(limiter.check_key(&addr.to_string()).is_ok());
        }
        assert_eq!(limiter.len(), 20_000);
        assert_eq!(auth.prune(), 20_000, "none is idle yet");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        // One client submits again; it is remembered, with what it has used.
        let busy = "203.0.113.7".to_owned();
        assert!(limiter.check_key(&busy).is_ok());
        assert_eq!(auth.prune(), 1, "only the busy client is left");
        assert!(
            limiter.check_key(&busy).is_err(),
            "its use is not forgotten"
        );
        // Without a rate there is nothing to prune.
        assert_eq!(Auth::new(&ServerOptions::default()).prune(), 0);
    }

    #[test]
    fn roles_per_route() {
        assert_eq!(required_role(&Method::GET, "/api/jobs"), Some(Role::Viewer));
        assert_eq!(
            required_role(&Method::POST, "/api/jobs"),
            Some(Role::Operator)
        );
        assert_eq!(
            required_role(&Method::POST, "/api/jobs/x/pause"),
            Some(Role::Operator)
        );
        assert_eq!(
            required_role(&Method::DELETE, "/api/jobs/x"),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role(&Method::POST, "/api/schedules"),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role(&Method::POST, "/api/schedules/x/trigger"),
            Some(Role::Operator)
        );
        assert_eq!(
            required_role(&Method::PUT, "/api/pipelines/x"),
            Some(Role::Admin)
        );
        assert_eq!(required_role(&Method::GET, "/healthz"), None);
    }
}
