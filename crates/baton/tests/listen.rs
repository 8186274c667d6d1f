//! Where `baton serve` listens: a unix socket, TLS, and the refusal to listen beyond
//! loopback unprotected. Real servers, the real CLI, real sockets.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{BIN, ok};
use tempfile::TempDir;

/// A `baton serve` started with `args` in `dir`, and the first line it printed.
struct Serve {
    child: Child,
    line: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// The URL the server printed for `scheme` (`http://`, `https://`, `unix://`).
    fn url(&self, scheme: &str) -> String {
        self.line
            .split_whitespace()
            .find(|w| w.starts_with(scheme))
            .unwrap_or_else(|| panic!("no {scheme} URL in {:?}", self.line))
            .trim_end_matches([';', ','])
            .to_owned()
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.child.wait().unwrap()
    }
}

/// Starts `baton serve ARGS`; `Err` holds the exit code and stderr of a server that
/// refused to start.
fn serve(dir: &Path, args: &[&str]) -> Result<Serve, (Option<i32>, String)> {
    let mut child = Command::new(BIN)
        .current_dir(dir)
        .arg("serve")
        .args(["--store", "sqlite://baton.db"])
        .args(args)
        .env_remove("BATON_SERVER")
        .env_remove("BATON_LISTEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    if line.is_empty() {
        let status = child.wait().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        return Err((status.code(), err));
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let mut err = child.stderr.take().unwrap();
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    Ok(Serve { child, line })
}

/// The CLI against `server`, with extra global flags first.
fn cli(dir: &Path, server: &str, flags: &[&str], args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .env_remove("BATON_SERVER")
        .env_remove("BATON_CA")
        .arg("--server")
        .arg(server)
        .args(flags)
        .args(args)
        .output()
        .unwrap()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_cli_submits_and_waits_over_a_unix_socket_made_0600() {
    let dir = TempDir::new().unwrap();
    let sock = dir.path().join("baton.sock");
    let listen = format!("unix://{}", sock.display());
    let server = serve(dir.path(), &["--listen", &listen]).unwrap();
    // No network port at all.
    assert!(!server.line.contains("http://"), "{}", server.line);
    assert_eq!(server.url("unix://"), listen);
    assert_eq!(mode(&sock), 0o600, "the socket file's mode");

    let side = dir.path().join("ran");
    let out = cli(
        dir.path(),
        &listen,
        &[],
        &[
            "submit",
            "--wait",
            "--",
            "sh",
            "-c",
            &format!("echo over-the-socket > {}", side.display()),
        ],
    );
    assert!(ok(&out).contains("completed"), "{}", ok(&out));
    assert_eq!(
        std::fs::read_to_string(&side).unwrap().trim(),
        "over-the-socket"
    );

    // BATON_SERVER names the socket too; `wait` follows the job's event stream.
    let id = ok(&Command::new(BIN)
        .current_dir(dir.path())
        .env("BATON_SERVER", &listen)
        .args(["submit", "--", "sleep", "0.3"])
        .output()
        .unwrap())
    .trim()
    .to_owned();
    let out = cli(dir.path(), &listen, &["--json"], &["wait", &id]);
    let job: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    assert_eq!(job["state"], "completed");

    // `events -f` streams over the socket as it happens.
    let mut follow = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--server", &listen, "events", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let id = ok(&cli(dir.path(), &listen, &[], &["submit", "--", "true"]))
        .trim()
        .to_owned();
    let seen = lines
        .by_ref()
        .map(|l| l.unwrap())
        .find(|l| l.contains(&id) && l.contains("job.completed"));
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen.is_some(), "events -f never showed {id} completing");

    // A graceful stop removes the socket file.
    assert!(server.terminate().success());
    assert!(!sock.exists(), "the socket file outlived the server");
}

#[test]
fn a_live_socket_is_refused_a_stale_one_replaced_and_no_other_file_touched() {
    let dir = TempDir::new().unwrap();
    let sock = dir.path().join("baton.sock");
    let listen = format!("unix://{}", sock.display());
    let first = serve(dir.path(), &["--listen", &listen]).unwrap();

    let other = TempDir::new().unwrap();
    let (code, err) = serve(other.path(), &["--listen", &listen])
        .err()
        .expect("a second engine started on a live socket");
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("another engine is answering on {listen}")),
        "{err}"
    );
    // It touched no store, and the first engine still answers.
    assert!(!other.path().join("baton.db").exists());
    ok(&cli(dir.path(), &listen, &[], &["ls"]));

    // A crash leaves the file behind; the next start replaces it.
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(sock.exists(), "a killed engine cannot remove its socket");
    let second = serve(other.path(), &["--listen", &listen]).unwrap();
    ok(&cli(dir.path(), &listen, &[], &["ls"]));
    drop(second);

    // A file that is not a socket is never replaced.
    let plain = dir.path().join("notes.txt");
    std::fs::write(&plain, "keep me").unwrap();
    let (_, err) = serve(
        other.path(),
        &["--listen", &format!("unix://{}", plain.display())],
    )
    .err()
    .expect("started on a regular file");
    assert!(
        err.contains(&format!("{} exists and is not a socket", plain.display())),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "keep me");
}

#[test]
fn a_socket_group_gets_mode_0660_and_tcp_can_listen_beside_it() {
    let dir = TempDir::new().unwrap();
    let gid = std::fs::metadata(dir.path()).unwrap().gid();
    let sock = dir.path().join("baton.sock");
    let listen = format!("unix://{}", sock.display());
    let server = serve(
        dir.path(),
        &[
            "--listen",
            &listen,
            "--listen",
            "127.0.0.1:0",
            "--socket-group",
            &gid.to_string(),
        ],
    )
    .unwrap();
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);
    // Both listeners serve the same engine.
    let id = ok(&cli(dir.path(), &listen, &[], &["submit", "--", "true"]))
        .trim()
        .to_owned();
    let http = server.url("http://");
    let out = cli(dir.path(), &http, &["--json"], &["wait", &id]);
    assert!(ok(&out).contains("\"completed\""));

    let (_, err) = serve(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--socket-group", "wheel"],
    )
    .err()
    .expect("socket_group without a socket");
    assert!(
        err.contains("invalid setting --socket-group: it applies to a unix:// listen address"),
        "{err}"
    );
}

/// A private authority and a certificate it signed for 127.0.0.1 and localhost.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_certs(dir: &Path, name: &str) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} test authority"));
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let certs = Certs {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&certs.ca, ca.pem()).unwrap();
    std::fs::write(&certs.cert, cert.pem()).unwrap();
    std::fs::write(&certs.key, key.serialize_pem()).unwrap();
    certs
}

fn serve_tls(dir: &Path, certs: &Certs) -> Serve {
    serve(
        dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            certs.cert.to_str().unwrap(),
            "--tls-key",
            certs.key.to_str().unwrap(),
        ],
    )
    .unwrap()
}

#[test]
fn the_cli_trusts_a_tls_server_through_ca_and_refuses_it_otherwise() {
    let dir = TempDir::new().unwrap();
    let certs = make_certs(dir.path(), "baton");
    let server = serve_tls(dir.path(), &certs);
    let url = server.url("https://");
    let ca = certs.ca.to_str().unwrap();

    let out = cli(
        dir.path(),
        &url,
        &["--ca", ca],
        &["submit", "--wait", "--", "true"],
    );
    assert!(ok(&out).contains("completed"));
    // By name as well as by address, and with BATON_CA.
    let by_name = url.replace("127.0.0.1", "localhost");
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env("BATON_CA", ca)
        .args(["--server", &by_name, "stats"])
        .output()
        .unwrap();
    assert!(ok(&out).contains("completed"));

    // Without --ca the system roots do not know the authority: a clear refusal, and
    // `submit --wait` does not fall back to running the command here.
    let side = dir.path().join("ran-here");
    let out = cli(
        dir.path(),
        &url,
        &[],
        &["submit", "--wait", "--", "touch", side.to_str().unwrap()],
    );
    let err = failed(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot talk to the Baton server at {url} securely"
        )) && err.contains("certificate is not trusted")
            && err.contains("--ca FILE"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !side.exists(),
        "the job ran although the server was not trusted"
    );

    // Another authority's certificate is no better.
    let stranger = make_certs(dir.path(), "stranger");
    let err = failed(&cli(
        dir.path(),
        &url,
        &["--ca", stranger.ca.to_str().unwrap()],
        &["ls"],
    ));
    assert!(err.contains("certificate is not trusted"), "{err}");
    // Nor is a --ca file that holds no certificate.
    let err = failed(&cli(
        dir.path(),
        &url,
        &["--ca", certs.key.to_str().unwrap()],
        &["ls"],
    ));
    assert!(
        err.contains(&format!(
            "invalid --ca {}: it holds no PEM certificate",
            certs.key.display()
        )),
        "{err}"
    );
    // Only the one job submitted through a trusted connection exists.
    let out = cli(dir.path(), &url, &["--ca", ca, "--json"], &["stats"]);
    let stats: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    assert_eq!(stats["total"], 1, "{stats}");
}

#[test]
fn plain_http_to_the_tls_port_reaches_no_api() {
    let dir = TempDir::new().unwrap();
    let certs = make_certs(dir.path(), "baton");
    let server = serve_tls(dir.path(), &certs);
    let url = server.url("https://");
    let addr = url.trim_start_matches("https://");
    let side = dir.path().join("ran");

    let body = format!(
        r#"{{"kind":"command","command":["touch","{}"]}}"#,
        side.display()
    );
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // The TLS listener may drop the connection while the request is still being
    // written: a broken pipe is a refusal too, and then there is no answer to read.
    let sent = write!(
        tcp,
        "POST /api/jobs HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut answer = Vec::new();
    match sent {
        Ok(()) => {
            let _ = tcp.read_to_end(&mut answer);
        }
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "writing plain HTTP to the TLS port failed oddly: {e}"
        ),
    }
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {}",
        String::from_utf8_lossy(&answer)
    );

    // The CLI over plain HTTP fails too.
    let err = failed(&cli(dir.path(), &format!("http://{addr}"), &[], &["ls"]));
    assert!(err.contains("cannot reach the Baton server"), "{err}");

    std::thread::sleep(Duration::from_millis(300));
    assert!(!side.exists());
    let out = cli(
        dir.path(),
        &url,
        &["--ca", certs.ca.to_str().unwrap(), "--json"],
        &["stats"],
    );
    let stats: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    assert_eq!(stats["total"], 0, "{stats}");
}

#[test]
fn serve_refuses_a_non_loopback_listen_without_tls_and_auth_unless_told() {
    let dir = TempDir::new().unwrap();
    let t0 = Instant::now();
    let (code, err) = serve(dir.path(), &["--listen", "0.0.0.0:0"])
        .err()
        .expect("listened beyond loopback unprotected");
    assert_eq!(code, Some(1));
    assert!(
        err.contains(
            "refusing to listen on 0.0.0.0:0 without TLS and auth: anyone on the network could read and control jobs; configure tls_cert and tls_key, and [auth] tokens, or pass --allow-insecure-remote (BATON_ALLOW_INSECURE_REMOTE=true) to do it anyway"
        ),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(!dir.path().join("baton.db").exists());

    // TLS alone is not enough.
    let certs = make_certs(dir.path(), "baton");
    let tls = [
        "--tls-cert",
        certs.cert.to_str().unwrap(),
        "--tls-key",
        certs.key.to_str().unwrap(),
    ];
    let mut args = vec!["--listen", "0.0.0.0:0"];
    args.extend(tls);
    let (_, err) = serve(dir.path(), &args).err().expect("TLS without auth");
    assert!(err.contains("on 0.0.0.0:0 without auth"), "{err}");

    // TLS and a token: it starts.
    let token_line = format!(
        "[auth]\ntokens = [{{ name = \"ci\", sha256 = \"{}\", role = \"admin\" }}]\n",
        baton_server::hash_token("s3cret-token")
    );
    std::fs::write(dir.path().join("baton.toml"), &token_line).unwrap();
    let server = serve(dir.path(), &args).unwrap();
    let port = server
        .url("https://")
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let local = format!("https://127.0.0.1:{port}");
    let out = cli(
        dir.path(),
        &local,
        &[
            "--ca",
            certs.ca.to_str().unwrap(),
            "--token",
            "s3cret-token",
        ],
        &["stats"],
    );
    ok(&out);
    drop(server);
    std::fs::remove_file(dir.path().join("baton.toml")).unwrap();

    // Plain and open, when the user says so.
    let server = serve(
        dir.path(),
        &["--listen", "0.0.0.0:0", "--allow-insecure-remote"],
    )
    .unwrap();
    let port = server.url("http://").rsplit(':').next().unwrap().to_owned();
    ok(&cli(
        dir.path(),
        &format!("http://127.0.0.1:{port}"),
        &[],
        &["stats"],
    ));
    drop(server);

    // Half a TLS setting is refused, naming what is missing.
    let (_, err) = serve(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            certs.cert.to_str().unwrap(),
        ],
    )
    .err()
    .expect("a certificate without its key");
    assert!(
        err.contains("invalid setting --tls-cert: tls_key is missing"),
        "{err}"
    );
    let (_, err) = serve(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "missing.pem",
            "--tls-key",
            certs.key.to_str().unwrap(),
        ],
    )
    .err()
    .expect("an unreadable certificate");
    assert!(err.contains("cannot read tls_cert missing.pem"), "{err}");
}

#[test]
fn silent_connections_from_one_host_cannot_hold_the_tls_port() {
    let dir = TempDir::new().unwrap();
    let certs = make_certs(dir.path(), "baton");
    let server = serve_tls(dir.path(), &certs);
    let url = server.url("https://");
    let addr: std::net::SocketAddr = url.trim_start_matches("https://").parse().unwrap();

    // One host opens connections and never starts a handshake.
    let attacker: std::net::SocketAddr = "127.0.0.2:0".parse().unwrap();
    let mut silent = Vec::new();
    for _ in 0..40 {
        let s = connect_from(attacker, addr);
        silent.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut closed = 0;
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        if matches!(s.read(&mut [0u8; 1]), Ok(0)) {
            closed += 1;
        }
    }
    assert_eq!(
        closed,
        40 - 16,
        "connections past the per-host share are closed at once"
    );

    // Everybody else still gets in at once.
    let t0 = Instant::now();
    ok(&cli(
        dir.path(),
        &url,
        &["--ca", certs.ca.to_str().unwrap()],
        &["stats"],
    ));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

/// A TCP connection from `from` (an address of this machine) to `to`.
fn connect_from(from: std::net::SocketAddr, to: std::net::SocketAddr) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(from).unwrap();
        let stream = socket.connect(to).await.unwrap().into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    })
}

/// Sends one raw HTTP/1.1 request over the unix socket and returns the status line.
fn raw_over_socket(sock: &Path, head: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    answer.trim().to_owned()
}

#[test]
fn socket_clients_are_not_held_to_a_host_name() {
    // No browser can open a unix socket, so DNS rebinding cannot reach it; HTTP
    // clients for sockets send what they like as Host (the socket's path, encoded,
    // for some), and all must be served.
    let dir = TempDir::new().unwrap();
    let sock = dir.path().join("baton.sock");
    let _server = serve(
        dir.path(),
        &["--listen", &format!("unix://{}", sock.display())],
    )
    .unwrap();
    let encoded = sock.display().to_string().replace('/', "%2F");
    for host in ["localhost", "evil.example", encoded.as_str()] {
        let status = raw_over_socket(
            &sock,
            &format!("GET /api/stats HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(status, "HTTP/1.1 200 OK", "Host: {host}");
    }
}
