//! A control group per job with limits: its memory and CPU quota set by the kernel,
//! its CPU time and memory peak read from the kernel, and all of its processes killed
//! when the job ends.
//!
//! Both versions are read and written here. cgroup v2 (one unified hierarchy, the
//! default of systemd machines since about 2021): `memory.max`, `memory.swap.max`,
//! `cpu.max`, `cpu.stat`, `memory.events`, `memory.peak`. cgroup v1 (a hierarchy per
//! controller, still found on older hosts and inside some containers): the
//! `memory`, `cpu` and `cpuacct` hierarchies with `memory.limit_in_bytes`,
//! `memory.memsw.limit_in_bytes`, `memory.oom_control`, `memory.max_usage_in_bytes`,
//! `cpu.cfs_quota_us`, `cpuacct.usage`. A v2 hierarchy that does not offer the memory
//! and cpu controllers (a hybrid host, where they are bound to v1) is passed over.
//!
//! Groups are made under the server's own cgroup (read from `/proc/self/cgroup`) in a
//! folder of this process, `baton.<pid>.<start time>`, one `job.<n>` folder a job. At
//! start, the folders of processes that are gone are emptied (their processes killed)
//! and removed.

use std::ffi::CString;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use baton_core::JobLimits;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The CPU quota's period, in microseconds: the kernel's default.
const PERIOD_US: u64 = 100_000;

/// Job groups of every engine of this process, numbered apart.
static NEXT_GROUP: AtomicU64 = AtomicU64::new(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

/// Where this process makes its jobs' groups.
#[derive(Debug)]
pub(crate) struct Cgroups {
    version: Version,
    /// This process's folder in each hierarchy used (v2: one).
    memory: PathBuf,
    cpu: PathBuf,
    /// v1 only: the `cpuacct` hierarchy, when it is apart from `cpu`'s.
    cpuacct: Option<PathBuf>,
}

impl Cgroups {
    /// Finds a cgroup version whose memory and cpu controllers this server may use,
    /// makes its folder there, removes the folders of processes that are gone, and
    /// checks that a job's group can be made and limited. The error says why none can
    /// be used.
    pub(crate) fn detect() -> Result<Cgroups, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let me =
            crate::procfs::proc_stat(std::process::id()).ok_or("cannot read /proc/self/stat")?;
        let name = format!("baton.{}.{}", std::process::id(), me.start_time);
        let found = Layout::find(&own, &mounts)?;
        let cgroups = found.prepare(&name)?;
        cgroups.probe()?;
        Ok(cgroups)
    }

    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// The folders jobs' groups are made in, for people.
    pub(crate) fn describe(&self) -> String {
        let mut dirs = vec![self.memory.display().to_string()];
        if self.cpu != self.memory {
            dirs.push(self.cpu.display().to_string());
        }
        if let Some(a) = &self.cpuacct {
            dirs.push(a.display().to_string());
        }
        dirs.join(", ")
    }

    /// Makes a job's group with its limits set. Its processes are placed in it at
    /// spawn (see [`JobGroup::procs_files`]).
    pub(crate) fn create(&self, limits: &JobLimits) -> std::io::Result<JobGroup> {
        let name = format!("job.{}", NEXT_GROUP.fetch_add(1, Ordering::Relaxed));
        let mut dirs = Vec::new();
        let mut make = |base: &Path| -> std::io::Result<PathBuf> {
            let dir = base.join(&name);
            if !dirs.contains(&dir) {
                std::fs::create_dir(&dir)?;
                dirs.push(dir.clone());
            }
            Ok(dir)
        };
        let memory = make(&self.memory)?;
        let cpu = make(&self.cpu)?;
        let cpuacct = match &self.cpuacct {
            Some(a) => Some(make(a)?),
            None => None,
        };
        let group = JobGroup {
            version: self.version,
            dirs,
            memory,
            cpu,
            cpuacct,
        };
        // A group that cannot be limited is removed again.
        if let Err(e) = group.set_limits(limits) {
            group.remove();
            return Err(e);
        }
        Ok(group)
    }

    /// Makes and removes a group with a memory limit and a CPU quota, so that a server
    /// finds out at start, not at its first limited job, that it cannot.
    fn probe(&self) -> Result<(), String> {
        let limits = JobLimits {
            memory: Some(64 << 20),
            cpu_time: None,
            cpus: Some(1.0),
        };
        let group = self
            .create(&limits)
            .map_err(|e| format!("cannot make a limited group in {}: {e}", self.describe()))?;
        group.remove();
        Ok(())
    }
}

/// A job's group, in each hierarchy used.
#[derive(Debug)]
pub(crate) struct JobGroup {
    version: Version,
    /// Every folder of the group (one per hierarchy).
    dirs: Vec<PathBuf>,
    memory: PathBuf,
    cpu: PathBuf,
    cpuacct: Option<PathBuf>,
}

impl JobGroup {
    fn set_limits(&self, limits: &JobLimits) -> std::io::Result<()> {
        match self.version {
            Version::V1 => {
                if let Some(m) = limits.memory {
                    write(&self.memory.join("memory.limit_in_bytes"), &m.to_string())?;
                    // Swap counts too, where the kernel accounts it: otherwise a job
                    // past its limit is swapped out instead of stopped.
                    write_if_present(
                        &self.memory.join("memory.memsw.limit_in_bytes"),
                        &m.to_string(),
                    )?;
                }
                if let Some(cpus) = limits.cpus {
                    write(&self.cpu.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                    write(
                        &self.cpu.join("cpu.cfs_quota_us"),
                        &quota_us(cpus).to_string(),
                    )?;
                }
            }
            Version::V2 => {
                if let Some(m) = limits.memory {
                    write(&self.memory.join("memory.max"), &m.to_string())?;
                    write_if_present(&self.memory.join("memory.swap.max"), "0")?;
                }
                if let Some(cpus) = limits.cpus {
                    write(
                        &self.cpu.join("cpu.max"),
                        &format!("{} {PERIOD_US}", quota_us(cpus)),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` file of each folder: writing `0` to one moves the writing
    /// process into it (the spawn hook does, between fork and exec).
    pub(crate) fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).ok())
            .collect()
    }

    /// CPU time of every process that ran in the group, in milliseconds.
    pub(crate) fn cpu_ms(&self) -> Option<u64> {
        match self.version {
            Version::V1 => {
                let dir = self.cpuacct.as_ref().unwrap_or(&self.cpu);
                let ns: u64 = read(&dir.join("cpuacct.usage"))?.trim().parse().ok()?;
                Some(ns / 1_000_000)
            }
            Version::V2 => {
                let us = keyed(&read(&self.cpu.join("cpu.stat"))?, "usage_usec")?;
                Some(us / 1_000)
            }
        }
    }

    /// How many processes of the group the kernel killed at its memory limit.
    pub(crate) fn oom_kills(&self) -> u64 {
        let (file, key) = match self.version {
            Version::V1 => ("memory.oom_control", "oom_kill"),
            Version::V2 => ("memory.events", "oom_kill"),
        };
        read(&self.memory.join(file))
            .and_then(|t| keyed(&t, key))
            .unwrap_or(0)
    }

    /// The most memory the kernel counted against the group's limit, in bytes (page
    /// cache included); `None` where the kernel does not keep it (v2 before 5.19).
    pub(crate) fn memory_peak(&self) -> Option<u64> {
        let file = match self.version {
            Version::V1 => "memory.max_usage_in_bytes",
            Version::V2 => "memory.peak",
        };
        read(&self.memory.join(file))?.trim().parse().ok()
    }

    /// Kills every process in the group, wherever its process group is (one that
    /// left it with `setsid` is still here). Returns how many it signalled.
    pub(crate) fn kill_all(&self) -> usize {
        let mut n = 0;
        for dir in &self.dirs {
            for pid in pids(dir) {
                if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }

    /// Kills what is left in the group and removes its folders; false when a folder
    /// still holds processes (being reaped).
    pub(crate) fn try_remove(&self) -> bool {
        self.kill_all();
        let mut removed = true;
        for dir in &self.dirs {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(_) => removed = false,
            }
        }
        removed
    }

    /// [`JobGroup::try_remove`], tried again for up to a second: blocks.
    pub(crate) fn remove(&self) {
        for _ in 0..100 {
            if self.try_remove() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        tracing::warn!(dirs = ?self.dirs, "cannot remove a job's cgroup; it still holds processes");
    }
}

/// The hierarchies found for this process, before its folder is made.
#[derive(Debug, PartialEq)]
struct Layout {
    version: Version,
    /// The server's own cgroup folder in each hierarchy.
    memory: PathBuf,
    cpu: PathBuf,
    cpuacct: Option<PathBuf>,
}

impl Layout {
    /// Reads `/proc/self/cgroup` and `/proc/self/mountinfo` (given as text): v2 when
    /// its hierarchy offers memory and cpu, else v1 when both are mounted.
    fn find(own: &str, mountinfo: &str) -> Result<Layout, String> {
        let mounts = Mount::parse_all(mountinfo);
        let mut why = Vec::new();
        // v2: the line "0::/path".
        let v2 = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .zip(mounts.iter().find(|m| m.fstype == "cgroup2"));
        match v2 {
            Some((path, mount)) => {
                // A server that moved itself into its leaf (see `prepare`) reads that
                // leaf here: its cgroup is the one above.
                let path = strip_own_leaf(path);
                let dir = mount.folder(path);
                let offered = read(&dir.join("cgroup.controllers")).unwrap_or_default();
                let offered: Vec<&str> = offered.split_whitespace().collect();
                if offered.contains(&"memory") && offered.contains(&"cpu") {
                    return Ok(Layout {
                        version: Version::V2,
                        memory: dir.clone(),
                        cpu: dir,
                        cpuacct: None,
                    });
                }
                why.push(format!(
                    "cgroup v2 at {} offers {} but not both memory and cpu",
                    dir.display(),
                    if offered.is_empty() {
                        "no controllers".to_owned()
                    } else {
                        offered.join(", ")
                    }
                ));
            }
            None => why.push("no cgroup v2 hierarchy is mounted for this process".into()),
        }
        let v1 = |controller: &str| -> Option<PathBuf> {
            let path = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let _id = parts.next()?;
                let names = parts.next()?;
                let path = parts.next()?;
                names.split(',').any(|n| n == controller).then_some(path)
            })?;
            let mount = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == controller))?;
            Some(mount.folder(path))
        };
        match (v1("memory"), v1("cpu")) {
            (Some(memory), Some(cpu)) => {
                let cpuacct = v1("cpuacct").filter(|a| *a != cpu);
                Ok(Layout {
                    version: Version::V1,
                    memory,
                    cpu,
                    cpuacct,
                })
            }
            (memory, _) => {
                why.push(format!(
                    "cgroup v1 has no {} hierarchy mounted for this process",
                    if memory.is_none() { "memory" } else { "cpu" }
                ));
                Err(why.join("; "))
            }
        }
    }

    /// Makes this process's folder (`name`) in each hierarchy and removes those of
    /// processes that are gone. On v2 the server first moves itself into a leaf of its
    /// own, `<name>/server`: a v2 group that hands controllers to its children may
    /// hold no process itself.
    fn prepare(self, name: &str) -> Result<Cgroups, String> {
        // The real root group (it has no `memory.max`) may hold processes and still
        // hand controllers down; any other must be left by this server first, which
        // is done only where it will work: no other process shares the group.
        let v2_leave = self.version == Version::V2 && self.memory.join("memory.max").exists();
        if v2_leave {
            let me = std::process::id() as i32;
            let others = pids(&self.memory).into_iter().filter(|p| *p != me).count();
            if others > 0 {
                return Err(format!(
                    "{others} other processes share this server's cgroup {} (give Baton a cgroup of its own, e.g. systemd's Delegate=yes)",
                    self.memory.display()
                ));
            }
        }
        let mut bases = vec![self.memory.clone()];
        for b in [Some(&self.cpu), self.cpuacct.as_ref()]
            .into_iter()
            .flatten()
        {
            if !bases.contains(b) {
                bases.push(b.clone());
            }
        }
        for base in &bases {
            remove_stale(base, name);
            let dir = base.join(name);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot make {}: {e}", dir.display())),
            }
        }
        if self.version == Version::V2 {
            let parent = &self.memory;
            let mine = parent.join(name);
            if v2_leave {
                let leaf = mine.join("server");
                match std::fs::create_dir(&leaf) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("cannot make {}: {e}", leaf.display())),
                }
                let procs = leaf.join("cgroup.procs");
                write(&procs, "0").map_err(|e| {
                    format!("cannot move this server into {}: {e}", procs.display())
                })?;
            }
            for dir in [parent, &mine] {
                let file = dir.join("cgroup.subtree_control");
                write(&file, "+memory +cpu").map_err(|e| {
                    format!(
                        "cannot hand the memory and cpu controllers to job groups through {}: {e} (give Baton a cgroup of its own, e.g. systemd's Delegate=yes, with no other process in it)",
                        file.display()
                    )
                })?;
            }
        }
        let at = |b: &PathBuf| b.join(name);
        Ok(Cgroups {
            version: self.version,
            memory: at(&self.memory),
            cpu: at(&self.cpu),
            cpuacct: self.cpuacct.as_ref().map(at),
        })
    }
}

/// A cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug, PartialEq)]
struct Mount {
    /// The folder of the hierarchy that the mount shows at its mount point.
    root: String,
    point: PathBuf,
    fstype: String,
    options: String,
}

impl Mount {
    fn parse_all(mountinfo: &str) -> Vec<Mount> {
        mountinfo
            .lines()
            .filter_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                let l: Vec<&str> = left.split(' ').collect();
                let r: Vec<&str> = right.split(' ').collect();
                Some(Mount {
                    root: unescape(l.get(3)?),
                    point: PathBuf::from(unescape(l.get(4)?)),
                    fstype: r.first()?.to_string(),
                    options: r.get(2).copied().unwrap_or("").to_string(),
                })
            })
            .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
            .collect()
    }

    /// The folder of cgroup `path` under this mount.
    fn folder(&self, path: &str) -> PathBuf {
        let rel = path
            .strip_prefix(self.root.as_str())
            .unwrap_or(path)
            .trim_start_matches('/');
        if rel.is_empty() {
            self.point.clone()
        } else {
            self.point.join(rel)
        }
    }
}

/// The cgroup a server had before it moved itself into `baton.<pid>.<start>/server`.
fn strip_own_leaf(path: &str) -> &str {
    let Some(rest) = path.strip_suffix("/server") else {
        return path;
    };
    match rest.rsplit_once('/') {
        Some((parent, last)) if last.starts_with("baton.") => {
            if parent.is_empty() {
                "/"
            } else {
                parent
            }
        }
        _ => path,
    }
}

/// mountinfo escapes spaces and a few others as octal (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the folders (`baton.<pid>.<start>`) of processes that are gone, killing
/// what still runs in their job groups first. Never this process's own (`name`).
fn remove_stale(base: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(other) = file.to_str() else { continue };
        if other == name || !is_gone(other) {
            continue;
        }
        let dir = entry.path();
        let children: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        let mut killed = 0;
        for child in &children {
            for pid in pids(child) {
                if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                    killed += 1;
                }
            }
        }
        for _ in 0..100 {
            for child in &children {
                let _ = std::fs::remove_dir(child);
            }
            if std::fs::remove_dir(&dir).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        tracing::info!(dir = %dir.display(), killed, "removed the job cgroups of a Baton process that is gone");
    }
}

/// Whether `baton.<pid>.<start>` names a process that no longer runs (or whose pid now
/// belongs to another process).
fn is_gone(name: &str) -> bool {
    let mut parts = name.split('.');
    let (Some("baton"), Some(pid), Some(start), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    crate::procfs::proc_stat(pid).is_none_or(|s| s.start_time != start)
}

fn quota_us(cpus: f64) -> u64 {
    ((cpus * PERIOD_US as f64).round() as u64).max(1_000)
}

fn pids(dir: &Path) -> Vec<i32> {
    read(&dir.join("cgroup.procs"))
        // A process of another pid namespace is listed as 0: never signal that.
        .map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .filter(|pid| *pid > 0)
                .collect()
        })
        .unwrap_or_default()
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The number after `key` in a `key value` per line file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn write_if_present(path: &Path, value: &str) -> std::io::Result<()> {
    match std::fs::write(path, value) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => {
            other.map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_OWN: &str = "\
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn a_hybrid_host_uses_v1_when_v2_lacks_the_controllers() {
        // The unified hierarchy here is a folder that does not exist: it offers nothing.
        let layout = Layout::find(HYBRID_OWN, HYBRID_MOUNTS).expect("v1 is usable");
        assert_eq!(
            layout,
            Layout {
                version: Version::V1,
                memory: "/sys/fs/cgroup/memory/process_api/abc".into(),
                cpu: "/sys/fs/cgroup/cpu".into(),
                cpuacct: Some("/sys/fs/cgroup/cpuacct".into()),
            }
        );
    }

    #[test]
    fn combined_cpu_and_cpuacct_and_a_mount_root_are_understood() {
        let mounts = "40 31 0:38 /docker/x /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                      41 31 0:39 /docker/x /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let own = "5:cpu,cpuacct:/docker/x/job\n4:memory:/docker/x\n";
        let layout = Layout::find(own, mounts).expect("v1");
        assert_eq!(layout.cpu, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/job"));
        assert_eq!(layout.cpuacct, None, "one hierarchy for both");
        assert_eq!(layout.memory, PathBuf::from("/sys/fs/cgroup/memory"));
    }

    #[test]
    fn no_usable_hierarchy_says_why() {
        let err = Layout::find(
            "0::/user.slice\n",
            "41 31 0:38 / /nonexistent rw - cgroup2 cgroup2 rw\n",
        )
        .unwrap_err();
        assert!(
            err.contains("cgroup v2 at /nonexistent/user.slice offers no controllers"),
            "{err}"
        );
        assert!(err.contains("cgroup v1 has no memory hierarchy"), "{err}");
    }

    #[test]
    fn a_v2_hierarchy_with_memory_and_cpu_is_chosen() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("system.slice/baton.service");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(
            own.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let mounts = format!(
            "41 31 0:38 / {} rw - cgroup2 cgroup2 rw\n",
            dir.path().display()
        );
        let layout = Layout::find("0::/system.slice/baton.service\n", &mounts).expect("v2");
        assert_eq!((layout.version, &layout.memory), (Version::V2, &own));
        // After the server moved itself into its leaf it still finds its own cgroup.
        let moved = "0::/system.slice/baton.service/baton.12.34/server\n";
        assert_eq!(Layout::find(moved, &mounts).expect("v2").memory, own);
    }

    #[test]
    fn v2_files_are_written_and_read_in_their_formats() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job.1");
        std::fs::create_dir(&job).unwrap();
        let group = JobGroup {
            version: Version::V2,
            dirs: vec![job.clone()],
            memory: job.clone(),
            cpu: job.clone(),
            cpuacct: None,
        };
        let limits = JobLimits {
            memory: Some(512_000_000),
            cpu_time: None,
            cpus: Some(1.5),
        };
        group.set_limits(&limits).unwrap();
        let read = |f: &str| std::fs::read_to_string(job.join(f)).unwrap();
        assert_eq!(read("memory.max"), "512000000");
        assert_eq!(read("cpu.max"), "150000 100000");
        std::fs::write(
            job.join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\n",
        )
        .unwrap();
        std::fs::write(
            job.join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(job.join("memory.peak"), "536870912\n").unwrap();
        assert_eq!(group.cpu_ms(), Some(2500));
        assert_eq!(group.oom_kills(), 1);
        assert_eq!(group.memory_peak(), Some(536_870_912));
    }

    #[test]
    fn v1_oom_control_is_read() {
        assert_eq!(
            keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
        assert_eq!(keyed("oom_kill_disable 0\n", "oom_kill"), None);
    }

    #[test]
    fn stale_folder_names_are_told_from_live_ones() {
        let me = crate::procfs::proc_stat(std::process::id()).unwrap();
        assert!(!is_gone(&format!(
            "baton.{}.{}",
            std::process::id(),
            me.start_time
        )));
        assert!(is_gone(&format!(
            "baton.{}.{}",
            std::process::id(),
            me.start_time + 1
        )));
        assert!(is_gone(&format!("baton.{}.1", u32::MAX)));
        assert!(!is_gone("system.slice"));
        assert!(!is_gone("baton.x.y"));
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(strip_own_leaf("/a/baton.1.2/server"), "/a");
        assert_eq!(strip_own_leaf("/baton.1.2/server"), "/");
        assert_eq!(strip_own_leaf("/a/server"), "/a/server");
    }
}
