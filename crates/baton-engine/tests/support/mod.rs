//! The child engine of the crash tests: the test binary runs itself again with only
//! its `child_mode` test, and the child reports `BATON ...` lines on stdout.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Instant;

pub struct Spawned {
    child: Child,
    lines: Receiver<String>,
}

impl Spawned {
    /// Starts the child with these environment variables.
    pub fn start<K: AsRef<OsStr>, V: AsRef<OsStr>>(env: &[(K, V)]) -> Self {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut cmd = Command::new(exe);
        cmd.args(["child_mode", "--exact", "--nocapture", "--test-threads=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the child");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may have begun the line with "test child_mode ... ".
                if let Some(at) = line.find("BATON ")
                    && tx.send(line[at + 6..].to_owned()).is_err()
                {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The child's next report, or `None` if it exits or the deadline passes.
    pub fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let wait = deadline.saturating_duration_since(Instant::now());
        self.lines.recv_timeout(wait).ok()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) -> std::process::ExitStatus {
        self.child.kill().expect("kill the child");
        self.child.wait().expect("reap the child")
    }

    /// Reports still unread once the child is dead.
    pub fn rest(&mut self) -> Vec<String> {
        self.lines.iter().collect()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
