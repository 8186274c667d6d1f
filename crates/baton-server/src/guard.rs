//! Who may reach the API at all, checked before auth: the `Host` check against DNS
//! rebinding and the `Origin` check against cross-site requests and WebSocket
//! hijacking. Both exist because Baton runs commands and listens on loopback without
//! auth by default: any web page the user visits can make the browser send requests
//! to `127.0.0.1`, and only these two headers, which a page cannot forge, tell such a
//! request apart.
//!
//! - Host: a rebinding page reaches the server under its own name (`Host:
//!   attacker.example`), so a request is served only when its `Host` is a loopback name
//!   or address (or `0.0.0.0`, `[::]`), the address the connection arrived on (the listen address, or with a
//!   wildcard listen the machine's address the client used), or a name listed in
//!   `allowed_hosts`. A request without `Host` (HTTP/1.0) is served: browsers always
//!   send one, so it cannot come from a page.
//! - Origin: browsers send `Origin` with every state-changing request and every
//!   WebSocket handshake, and apply no CORS to WebSockets nor to "simple" POSTs. Such a
//!   request is served only when its origin is the server's own (its authority is the
//!   request's `Host`) or listed in `cors_origins`. Without `Origin` (the CLI, curl,
//!   scripts) nothing is checked: those are not a page.

use std::net::{IpAddr, SocketAddr};

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{Method, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};

use crate::AppState;
use crate::error::ApiError;

/// Both ends of a connection, as the server's connect info: the client's address (for
/// rate limits) and the local one it reached (for the `Host` check).
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub remote: SocketAddr,
    pub local: Option<SocketAddr>,
}

/// A TCP listener whose connections send at once (`TCP_NODELAY`): events are small
/// writes that must leave at once, not wait for an ACK.
pub struct NoDelay(pub tokio::net::TcpListener);

impl Listener for NoDelay {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = Listener::accept(&mut self.0).await;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        (tcp, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Listener::local_addr(&self.0)
    }
}

impl Connected<IncomingStream<'_, NoDelay>> for Peer {
    fn connect_info(stream: IncomingStream<'_, NoDelay>) -> Self {
        Peer {
            remote: *stream.remote_addr(),
            local: stream.io().local_addr().ok(),
        }
    }
}

/// The checked `allowed_hosts` and `cors_origins`.
#[derive(Debug, Default)]
pub struct Guard {
    /// Lowercase names and canonical addresses; `*` turns the check off.
    hosts: Vec<String>,
    any_host: bool,
    /// Lowercase origins with their default port made explicit.
    origins: Vec<String>,
    any_origin: bool,
}

impl Guard {
    pub fn new(allowed_hosts: &[String], cors_origins: &[String]) -> Self {
        let mut guard = Guard::default();
        for h in allowed_hosts {
            if h.trim() == "*" {
                guard.any_host = true;
            } else if let Some(h) = normalize_host(h) {
                guard.hosts.push(h);
            }
        }
        for o in cors_origins {
            if o.trim() == "*" {
                guard.any_origin = true;
            } else if let Some(o) = normalize_origin(o) {
                guard.origins.push(o);
            }
        }
        guard
    }

    /// Whether a `Host` value may reach the server over a connection to `local`.
    pub fn host_allowed(&self, host: &str, local: Option<IpAddr>) -> bool {
        if self.any_host {
            return true;
        }
        let Some((name, _port)) = split_authority(host) else {
            return false;
        };
        let Some(name) = normalize_host(name) else {
            return false;
        };
        if let Ok(ip) = name.parse::<IpAddr>() {
            // 0.0.0.0 and [::] reach this machine only (the CLI uses them when told
            // the wildcard listen address).
            return ip.to_canonical().is_loopback()
                || ip.is_unspecified()
                || local.is_some_and(|l| l.to_canonical() == ip.to_canonical())
                || self.hosts.contains(&name);
        }
        name == "localhost" || name.ends_with(".localhost") || self.hosts.contains(&name)
    }

    /// Whether a request with this `Origin`, sent to this `Host`, may change state.
    pub fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        if self.any_origin {
            return true;
        }
        let Some(origin) = normalize_origin(origin) else {
            return false;
        };
        if self.origins.contains(&origin) {
            return true;
        }
        // The server's own origin: the authority the browser used is the Host it sent.
        let Some(host) = host else { return false };
        let Some((scheme, _)) = origin.split_once("://") else {
            return false;
        };
        normalize_origin(&format!("{scheme}://{host}")).is_some_and(|own| own == origin)
    }
}

/// A host name or address as it is compared: lowercase, without a final dot, an IPv6
/// address without brackets and in its canonical form; `None` when it is neither.
pub fn normalize_host(host: &str) -> Option<String> {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(ip.to_canonical().to_string());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (!host.is_empty() && host.len() <= 253 && host.split('.').all(label_ok)).then_some(host)
}

/// Splits `name[:port]` or `[v6][:port]`; `None` when the port is not a number.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let rest = &authority[end + 1..];
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(p),
            None if rest.is_empty() => None,
            None => return None,
        };
        (&authority[..=end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((name, port))
}

/// An origin as it is compared: `scheme://host:port`, lowercase, the default port of
/// `http` or `https` made explicit; `None` when it is not such an origin (`null`, a
/// path, another scheme).
pub fn normalize_origin(origin: &str) -> Option<String> {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, authority) = origin.split_once("://")?;
    let default = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    if authority.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (name, port) = split_authority(authority)?;
    let name = normalize_host(name)?;
    let name = if name.contains(':') {
        format!("[{name}]")
    } else {
        name
    };
    Some(format!("{scheme}://{name}:{}", port.unwrap_or(default)))
}

/// Whether a request asks to become a WebSocket.
fn is_upgrade(req: &Request) -> bool {
    *req.method() == Method::CONNECT
        || req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("websocket"))
}

/// The outermost layer of a served router: hands the client's address on as
/// `ConnectInfo<SocketAddr>`, which the rate limits key on.
pub async fn peer(mut req: Request, next: Next) -> Response {
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<Peer>>().copied() {
        req.extensions_mut().insert(ConnectInfo(peer.remote));
    }
    next.run(req).await
}

/// Headers every answer carries, so that a browser neither runs, frames nor sniffs
/// what the API sends, nor tells another site which URL it came from. An answer that
/// sets its own (a page that runs its own scripts) keeps them.
pub async fn headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        if !headers.contains_key(&name) {
            headers.insert(name, header::HeaderValue::from_static(value));
        }
    }
    response
}

/// A request refused before its body was read (no token, a foreign `Host`, a full
/// server) leaves that body on the connection, so the connection cannot carry another
/// request and closes after the answer. A keep-alive client that is not told reuses
/// it, and its next request fails with "server disconnected". So an error answer to a
/// request with a body says `Connection: close` (HTTP/1 only; HTTP/2 streams do not
/// share a body this way).
pub async fn close_after_refusal(req: Request, next: Next) -> Response {
    let has_body = req.version() <= Version::HTTP_11
        && (req.headers().contains_key(header::TRANSFER_ENCODING)
            || req
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_some_and(|n| n.as_bytes() != b"0"));
    let mut response = next.run(req).await;
    let status = response.status();
    if has_body && (status.is_client_error() || status.is_server_error()) {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
}

/// The Host and Origin checks (see the module documentation); `/healthz` and
/// `/readyz`, which neither say nor change anything, are outside them so that probes
/// may use any name.
pub async fn middleware(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    // A unix socket's client is on this machine and passed the file's permissions; no
    // browser opens one, so neither rebinding nor a foreign page can reach it.
    if req
        .extensions()
        .get::<ConnectInfo<crate::listen::UnixPeer>>()
        .is_some()
    {
        return next.run(req).await;
    }
    let guard = &s.guard;
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        // Which one counts would be a guess (RFC 9112 answers 400 as well).
        return ApiError::bad_request("the request has more than one Host header").into_response();
    }
    // HTTP/2 carries the authority in the URI, and so does an HTTP/1 request to an
    // absolute URI (`POST http://name/api/jobs`), whose authority, not its Host header,
    // names the server it is for (RFC 9112 section 3.2.2): both are checked.
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().rsplit('@').next().unwrap_or_default().to_owned());
    let host = match first {
        Some(v) => match v.to_str() {
            Ok(v) => Some(v.to_owned()),
            Err(_) => return ApiError::bad_request("the Host header is not text").into_response(),
        },
        None => authority.clone(),
    };
    let local = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .and_then(|c| c.0.local)
        .map(|a| a.ip());
    for host in host.iter().chain(authority.iter()) {
        if !guard.host_allowed(host, local) {
            return ApiError::forbidden(format!(
                "host {host:?} is not allowed: this server answers only to loopback names and addresses, the address it listens on, and the names in allowed_hosts (set allowed_hosts in baton.toml, BATON_ALLOWED_HOSTS or --allowed-host to reach it by this name; with a wildcard listen address every name must be listed); this guards against DNS rebinding"
            ))
            .into_response();
        }
    }
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if (changes || is_upgrade(&req))
        && let Some(origin) = req.headers().get(header::ORIGIN)
    {
        let origin = String::from_utf8_lossy(origin.as_bytes());
        if !guard.origin_allowed(&origin, host.as_deref()) {
            return ApiError::forbidden(format!(
                "origin {origin:?} may not change anything on this server nor open its WebSocket: only its own origin and the origins in cors_origins may (set cors_origins in baton.toml, BATON_CORS_ORIGINS or --cors-origin to allow it); this guards against cross-site requests and WebSocket hijacking"
            ))
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(hosts: &[&str], origins: &[&str]) -> Guard {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Guard::new(&owned(hosts), &owned(origins))
    }

    #[test]
    fn hosts() {
        let g = guard(&["baton.internal", "10.1.2.3", "[fd00::1]"], &[]);
        let lan: IpAddr = "192.168.1.5".parse().unwrap();
        for ok in [
            "localhost",
            "localhost:7700",
            "LOCALHOST.:7700",
            "app.localhost:1",
            "127.0.0.1:7700",
            "127.9.8.7",
            "[::1]:7700",
            "[::ffff:127.0.0.1]:7700",
            "baton.internal:7700",
            "Baton.Internal",
            "10.1.2.3:80",
            "[fd00::1]:7700",
            "192.168.1.5:7700",
            "0.0.0.0:7700",
            "[::]:7700",
        ] {
            assert!(g.host_allowed(ok, Some(lan)), "{ok} is refused");
        }
        for bad in [
            "attacker.example",
            "attacker.example:7700",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "192.168.1.6:7700",
            "baton.internal.evil",
            "::1",
            "[::1]x",
            "localhost:port",
            "",
            "local host",
        ] {
            assert!(!g.host_allowed(bad, Some(lan)), "{bad} is allowed");
        }
        // Without a local address (a router used in process), only loopback and the list.
        assert!(!g.host_allowed("192.168.1.5", None));
        assert!(guard(&["*"], &[]).host_allowed("anything.example", None));
    }

    #[test]
    fn origins() {
        let g = guard(&[], &["https://app.example", "http://localhost:3000/"]);
        let own = Some("127.0.0.1:7700");
        for ok in [
            "http://127.0.0.1:7700",
            "https://127.0.0.1:7700",
            "https://app.example",
            "https://APP.example:443",
            "http://localhost:3000",
        ] {
            assert!(g.origin_allowed(ok, own), "{ok} is refused");
        }
        for bad in [
            "http://evil.example",
            "http://127.0.0.1:7701",
            "http://localhost:7700",
            "http://app.example",
            "null",
            "file://",
            "http://127.0.0.1:7700/path",
        ] {
            assert!(!g.origin_allowed(bad, own), "{bad} is allowed");
        }
        assert!(!g.origin_allowed("http://127.0.0.1:7700", None));
        assert!(guard(&[], &["http://a:80"]).origin_allowed("http://a", None));
        assert!(guard(&[], &["*"]).origin_allowed("http://evil.example", own));
        assert!(guard(&[], &[]).origin_allowed("http://localhost", Some("localhost:80")));
    }
}
