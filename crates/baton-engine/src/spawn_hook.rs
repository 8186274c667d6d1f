//! The one place the engine runs code in a child between `fork` and `exec`, and the
//! one module of the crate allowed `unsafe`: a job with limits must be in its cgroup,
//! and under its `RLIMIT_CPU`, before its program runs, or its first children could
//! escape. `posix_spawn` has no such hook, so only jobs with limits take this path
//! (a `fork`); every other job keeps the fast `posix_spawn` path.
#![allow(unsafe_code)]

use std::ffi::CString;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::stat::Mode;

/// What the child does before `exec`: everything is prepared in the parent.
#[derive(Debug, Default)]
pub(crate) struct SpawnHook {
    /// `cgroup.procs` files: writing `0` moves the writing process into the group.
    pub procs: Vec<CString>,
    /// `RLIMIT_CPU` (soft, hard), in seconds.
    pub cpu_limit: Option<(u64, u64)>,
}

impl SpawnHook {
    pub(crate) fn is_empty(&self) -> bool {
        self.procs.is_empty() && self.cpu_limit.is_none()
    }

    /// Installs the hook on `cmd`; a failure in the child fails the spawn with its
    /// error.
    pub(crate) fn install(self, cmd: &mut tokio::process::Command) {
        // SAFETY: the closure runs in the forked child, where only async-signal-safe
        // calls are allowed. It makes only system calls (open, write, close, setrlimit)
        // on data built before the fork, allocates nothing (the paths are `CString`s
        // already, `io::Error::from_raw_os_error` holds a number), and takes no lock.
        unsafe {
            cmd.pre_exec(move || self.run());
        }
    }

    fn run(&self) -> std::io::Result<()> {
        for path in &self.procs {
            let fd = open(
                path.as_c_str(),
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(io)?;
            nix::unistd::write(&fd, b"0").map_err(io)?;
        }
        if let Some((soft, hard)) = self.cpu_limit {
            setrlimit(Resource::RLIMIT_CPU, soft, hard).map_err(io)?;
        }
        Ok(())
    }
}

fn io(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}
