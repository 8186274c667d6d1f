//! The listeners the API answers on: plain TCP, TCP with TLS, and a unix socket.
//!
//! All of them serve the same router; one shutdown stops them all.

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::guard::Peer;
use crate::{AppState, ServerOptions, router};

/// A TLS handshake not done by then is dropped, so that silent connections cannot
/// pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes worked on at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 1024;
/// Handshakes one client address may have under way; its further connections are
/// closed at once, so that one host holding silent connections open cannot make
/// everybody else wait for [`HANDSHAKE_TIMEOUT`].
const MAX_HANDSHAKES_PER_CLIENT: usize = 16;

/// The handshakes under way per client address.
#[derive(Clone, Default)]
struct Pending(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

impl Pending {
    /// Counts one more handshake from `ip`, unless it already has its share.
    fn enter(&self, ip: std::net::IpAddr) -> Option<PendingGuard> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_CLIENT {
            return None;
        }
        *n += 1;
        Some(PendingGuard {
            pending: self.clone(),
            ip,
        })
    }
}

struct PendingGuard {
    pending: Pending,
    ip: std::net::IpAddr,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut map = self.pending.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Why a listener could not be set up; each names the file or address at fault.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot read {setting} {}: {error}", path.display())]
    Read {
        setting: &'static str,
        path: PathBuf,
        /// Part of the message, not a `source`: the cause would be printed twice.
        error: std::io::Error,
    },
    #[error("invalid {setting} {}: {message}", path.display())]
    Pem {
        setting: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("tls_cert {} and tls_key {} cannot be used together: {message}", cert.display(), key.display())]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error(
        "another engine is answering on unix://{}; stop it or choose another socket path",
        path.display()
    )]
    SocketInUse { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot listen on unix://{}: {error}", path.display())]
    Socket {
        path: PathBuf,
        /// Part of the message, not a `source`: the cause would be printed twice.
        error: std::io::Error,
    },
}

/// A server certificate and key, read and checked.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    config: Arc<ServerConfig>,
}

impl TlsConfig {
    /// Reads a PEM certificate chain and its PEM private key.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsConfig, ListenError> {
        let cert_pem = std::fs::read(cert).map_err(|error| ListenError::Read {
            setting: "tls_cert",
            path: cert.into(),
            error,
        })?;
        let key_pem = std::fs::read(key).map_err(|error| ListenError::Read {
            setting: "tls_key",
            path: key.into(),
            error,
        })?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ListenError::Pem {
                setting: "tls_cert",
                path: cert.into(),
                message: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(ListenError::Pem {
                setting: "tls_cert",
                path: cert.into(),
                message: "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
            });
        }
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| ListenError::Pem {
            setting: "tls_key",
            path: key.into(),
            message: match e {
                tokio_rustls::rustls::pki_types::pem::Error::NoItemsFound => {
                    "it holds no PEM private key (-----BEGIN PRIVATE KEY-----)".into()
                }
                e => e.to_string(),
            },
        })?;
        // *ring*, as the CLI's client uses, rather than aws-lc-rs and its C and CMake
        // build; its key exchange (X25519, P-256) is classical, not post-quantum.
        #[allow(deprecated)]
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
            .map_err(|e| ListenError::Pair {
                cert: cert.into(),
                key: key.into(),
                message: e.to_string(),
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig {
            config: Arc::new(config),
        })
    }
}

/// A TCP listener whose connections are TLS: handshakes run in their own tasks, and
/// only finished ones are handed to the server.
pub struct TlsListener {
    done: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, tls: &TlsConfig) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(tls.config.clone());
        let (tx, done) = mpsc::channel(64);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let pending = Pending::default();
        let accepting = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(counted) = pending.enter(peer.ip()) else {
                    tracing::debug!(%peer, "too many TLS handshakes from this address; closed");
                    continue;
                };
                // Events are small writes that must leave at once, not wait for an ACK.
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _held = (permit, counted);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            done,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.done.recv().await {
            Some(x) => x,
            // The accepting task only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// A unix socket file this server created, removed when dropped (at graceful
/// shutdown) if it is still the same file.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && m.dev() == self.dev
            && m.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds a unix socket at `path` with mode 0600, or 0660 owned by `group`.
///
/// A socket file left by an engine that crashed is replaced; one another engine
/// still answers on is refused, and so is any file that is not a socket. The socket
/// is bound in a private folder, given its mode, and only then linked at `path`, so
/// that no other user can connect in between, and two engines starting at once
/// cannot both take the path.
pub fn bind_unix(
    path: &Path,
    group: Option<u32>,
) -> Result<(UnixListener, SocketFile), ListenError> {
    use std::os::unix::fs::FileTypeExt;
    let failed = |error| ListenError::Socket {
        path: path.into(),
        error,
    };
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(ListenError::NotASocket { path: path.into() });
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ListenError::SocketInUse { path: path.into() }),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "replacing the socket file of an engine that is gone");
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(failed(e)),
                }
            }
            Err(e) => return Err(failed(e)),
        }
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let private = parent.join(format!(".baton-{}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(failed)?;
    let staged = private.join("s");
    let bound = (|| -> std::io::Result<std::os::unix::net::UnixListener> {
        let listener = std::os::unix::net::UnixListener::bind(&staged)?;
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&staged, None, Some(gid))?;
        }
        std::fs::hard_link(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    let listener = match bound {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(ListenError::SocketInUse { path: path.into() });
        }
        Err(e) => return Err(failed(e)),
    };
    let m = std::fs::symlink_metadata(path).map_err(failed)?;
    let file = SocketFile {
        path: path.into(),
        dev: m.dev(),
        ino: m.ino(),
    };
    listener.set_nonblocking(true).map_err(failed)?;
    let listener = UnixListener::from_std(listener).map_err(failed)?;
    Ok((listener, file))
}

/// The connection info of a request that came over the unix socket, as
/// `ConnectInfo<UnixPeer>` (TCP and TLS requests carry `ConnectInfo<SocketAddr>`).
/// Such a client is on this machine and passed the socket file's permissions; no
/// browser can open a unix socket, so checks against DNS rebinding (`Host`) do not
/// apply to it.
#[derive(Clone, Copy, Debug)]
pub struct UnixPeer {
    /// The peer's user id, as the kernel reports it.
    pub uid: Option<u32>,
    /// The peer's process id, as the kernel reports it.
    pub pid: Option<i32>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, UnixListener>>
    for UnixPeer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, UnixListener>) -> Self {
        let cred = stream.io().peer_cred().ok();
        UnixPeer {
            uid: cred.map(|c| c.uid()),
            pid: cred.and_then(|c| c.pid()),
        }
    }
}

/// Both ends of a TLS connection, read from the TCP stream under it: the local end is
/// the address the client reached, which the `Host` check accepts.
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Peer {
            remote: *stream.remote_addr(),
            local: stream.io().get_ref().0.local_addr().ok(),
        }
    }
}

/// One listener the API answers on.
pub enum Listener {
    Tcp(TcpListener),
    Tls(TlsListener),
    Unix(UnixListener),
}

/// Serves on every listener until `shutdown` completes, then stops accepting, lets
/// streams drain, and returns; the caller shuts the engine down after.
pub async fn serve_all(
    listeners: Vec<Listener>,
    state: AppState,
    options: &ServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone(), options);
    let stop = CancellationToken::new();
    let draining = state.metrics.draining.clone();
    let trigger = stop.clone();
    let watcher = tokio::spawn(async move {
        shutdown.await;
        // Open streams end their responses once this is set.
        draining.cancel();
        trigger.cancel();
    });
    let mut serving = tokio::task::JoinSet::new();
    for listener in listeners {
        let app = app.clone();
        let stop = stop.clone();
        match listener {
            Listener::Tcp(l) => {
                serving.spawn(
                    axum::serve(
                        crate::guard::NoDelay(l),
                        app.into_make_service_with_connect_info::<Peer>(),
                    )
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .into_future(),
                );
            }
            Listener::Tls(l) => {
                serving.spawn(
                    axum::serve(l, app.into_make_service_with_connect_info::<Peer>())
                        .with_graceful_shutdown(stop.cancelled_owned())
                        .into_future(),
                );
            }
            Listener::Unix(l) => {
                serving.spawn(
                    axum::serve(l, app.into_make_service_with_connect_info::<UnixPeer>())
                        .with_graceful_shutdown(stop.cancelled_owned())
                        .into_future(),
                );
            }
        }
    }
    let mut result = Ok(());
    while let Some(done) = serving.join_next().await {
        let outcome = done.unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = outcome {
            state.metrics.draining.cancel();
            stop.cancel();
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    watcher.abort();
    result
}
