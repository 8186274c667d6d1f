//! A real `baton serve` on a free loopback port, and the real CLI to drive it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_baton");

pub struct Server {
    pub child: Child,
    pub url: String,
    pub dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(config: Option<&str>) -> Server {
    start_in(TempDir::new().unwrap(), config)
}

impl Server {
    /// Kills the server with SIGKILL, as a crash would, and starts another on the same
    /// folder and database.
    pub fn crash_and_restart(mut self) -> Server {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let dir = std::mem::replace(&mut self.dir, TempDir::new().unwrap());
        drop(self);
        start_in(dir, None)
    }
}

/// A `baton serve` in `dir` (a `baton.toml` written there when `config` is given).
pub fn start_in(dir: TempDir, config: Option<&str>) -> Server {
    start_on(dir, "sqlite://baton.db", config)
}

/// A `baton serve` in `dir` on the store at `store`.
pub fn start_on(dir: TempDir, store: &str, config: Option<&str>) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--store", store])
        .env_remove("BATON_SERVER")
        .stdout(Stdio::piped())
        .stderr(match std::env::var_os("BATON_TEST_SERVER_LOG") {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::null(),
        });
    if let Some(text) = config {
        std::fs::write(dir.path().join("baton.toml"), text).unwrap();
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // Keep reading, as a terminal would, so the server can go on printing.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    Server { child, url, dir }
}

pub fn baton(server: &Server, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(server.dir.path())
        .arg("--server")
        .arg(&server.url)
        .args(args)
        .output()
        .unwrap()
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn json(server: &Server, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(ok(&baton(server, &all)).trim()).unwrap()
}

/// One way to start `baton serve` wrongly: its flags, its `BATON_*` environment (none
/// other is inherited), and what the refusal must say.
pub type Refusal<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

/// Starts `baton serve` in `dir` once per case and checks that each is refused at
/// start, naming the setting, before any database is opened.
pub fn refused_at_start(dir: &std::path::Path, cases: &[Refusal]) {
    for (args, env, want) in cases {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--store",
                "sqlite://x.db",
            ])
            .args(*args);
        for (name, _) in std::env::vars() {
            if name.starts_with("BATON_") {
                cmd.env_remove(name);
            }
        }
        let out = cmd.envs(env.iter().copied()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?} was taken: {err}");
        assert!(err.contains(want), "{args:?} {env:?}: {err} lacks {want}");
    }
    assert!(!dir.join("x.db").exists(), "nothing was opened");
}

/// `GET path` over a new connection; the answer's body as JSON.
pub fn get(server: &Server, path: &str) -> Value {
    let addr = server.url.trim_start_matches("http://");
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    let body = answer.split_once("\r\n\r\n").expect("an HTTP answer").1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}
