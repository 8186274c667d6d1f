//! How a command or pipeline job's resource limits are enforced: with a cgroup of its
//! own where the server can make one (the kernel holds memory and CPU quota, and counts
//! CPU time exactly), and otherwise with `setrlimit` on each process plus the usage
//! sampler, which kills the job's process group once it passes its limit. What a job
//! that passed a limit fails with.

use std::time::Duration;

use baton_core::resources::{format_bytes, format_cpu};

use crate::cgroup::{Cgroups, Version};
use crate::context::{Exit, JobError};

/// How job limits are enforced (`[limits] mechanism` in `baton.toml`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LimitsMechanism {
    /// cgroups when this server can make them, else rlimits and the sampler.
    #[default]
    Auto,
    /// cgroups or nothing: the engine refuses to start without them.
    Cgroup,
    /// `setrlimit` and the sampler, even where cgroups would do.
    Rlimit,
}

impl LimitsMechanism {
    pub fn parse(s: &str) -> Option<LimitsMechanism> {
        match s {
            "auto" => Some(LimitsMechanism::Auto),
            "cgroup" => Some(LimitsMechanism::Cgroup),
            "rlimit" => Some(LimitsMechanism::Rlimit),
            _ => None,
        }
    }
}

/// How the engine measures and limits jobs' processes.
#[derive(Clone, Debug)]
pub struct UsageOptions {
    /// How often running jobs' processes are measured (and limits checked).
    pub sample_every: Duration,
    /// The least time between two `job.usage` events (and writes) of one job.
    pub event_every: Duration,
    pub mechanism: LimitsMechanism,
}

/// The sampler's default interval.
pub const DEFAULT_SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The default least time between two `job.usage` events of a job.
pub const DEFAULT_EVENT_EVERY: Duration = Duration::from_secs(5);

impl Default for UsageOptions {
    fn default() -> Self {
        Self {
            sample_every: DEFAULT_SAMPLE_EVERY,
            event_every: DEFAULT_EVENT_EVERY,
            mechanism: LimitsMechanism::Auto,
        }
    }
}

pub use baton_core::LimitsReport;

/// The mechanism chosen at start.
#[derive(Debug)]
pub(crate) enum Enforcer {
    Cgroups(Cgroups),
    Rlimit {
        /// Why cgroups are not used.
        why: String,
    },
}

impl Enforcer {
    /// Chooses by `mechanism`; `Cgroup` without usable cgroups is an error saying why.
    pub(crate) fn choose(mechanism: LimitsMechanism) -> Result<Enforcer, String> {
        match mechanism {
            LimitsMechanism::Rlimit => Ok(Enforcer::Rlimit {
                why: "limits mechanism \"rlimit\" is configured".into(),
            }),
            LimitsMechanism::Cgroup => Cgroups::detect().map(Enforcer::Cgroups),
            LimitsMechanism::Auto => Ok(match Cgroups::detect() {
                Ok(c) => Enforcer::Cgroups(c),
                Err(why) => {
                    tracing::info!(%why, "job limits fall back to rlimits and the sampler");
                    Enforcer::Rlimit { why }
                }
            }),
        }
    }

    pub(crate) fn cgroups(&self) -> Option<&Cgroups> {
        match self {
            Enforcer::Cgroups(c) => Some(c),
            Enforcer::Rlimit { .. } => None,
        }
    }

    pub(crate) fn report(&self, sample_every: Duration, event_every: Duration) -> LimitsReport {
        let every = baton_core::duration::format(sample_every);
        match self {
            Enforcer::Cgroups(c) => {
                let v = match c.version() {
                    Version::V1 => "cgroup v1",
                    Version::V2 => "cgroup v2",
                };
                let (memory, cpus) = match c.version() {
                    Version::V1 => ("memory.limit_in_bytes", "cpu.cfs_quota_us"),
                    Version::V2 => ("memory.max", "cpu.max"),
                };
                LimitsReport {
                    mechanism: v.into(),
                    memory: format!(
                        "the job's cgroup ({memory}): the kernel stops a process of the job at the limit, and the job is killed"
                    ),
                    cpu_time: format!(
                        "the job's cgroup counts its CPU time; the sampler kills the job once it passes the limit (checked every {every})"
                    ),
                    cpus: format!("the job's cgroup ({cpus})"),
                    cpus_enforced: true,
                    cgroups: Some(c.describe()),
                    cgroups_unavailable: None,
                    sample_every: every,
                    usage_event_every: baton_core::duration::format(event_every),
                }
            }
            Enforcer::Rlimit { why } => LimitsReport {
                mechanism: "rlimit".into(),
                memory: format!(
                    "the sampler adds up the resident memory of the job's process group and kills it past the limit (checked every {every})"
                ),
                cpu_time: format!(
                    "RLIMIT_CPU on each process, and the sampler kills the job's process group once its CPU time passes the limit (checked every {every})"
                ),
                cpus: "not enforced: it needs cgroups".into(),
                cpus_enforced: false,
                cgroups: None,
                cgroups_unavailable: Some(why.clone()),
                sample_every: every,
                usage_event_every: baton_core::duration::format(event_every),
            },
        }
    }
}

/// A limit a job passed, and how far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LimitHit {
    Memory {
        used: u64,
        limit: u64,
        /// The kernel stopped a process at the cgroup's limit (else the sampler saw it).
        by_kernel: bool,
    },
    Cpu {
        used: Duration,
        limit: Duration,
    },
}

impl LimitHit {
    /// The job's error: `memory_limit` or `cpu_limit`, naming the limit and the value
    /// reached. Not retried: the same work would pass the same limit again.
    pub(crate) fn error(&self, what: &str) -> JobError {
        let e = match *self {
            LimitHit::Memory {
                used,
                limit,
                by_kernel,
            } => JobError::fatal_with_code(
                "memory_limit",
                format!(
                    "{what}{} used, limit {}; {}",
                    format_bytes(used),
                    format_bytes(limit),
                    if by_kernel {
                        "the kernel stopped the job at its cgroup's memory limit"
                    } else {
                        "the job's processes were killed"
                    }
                ),
            ),
            LimitHit::Cpu { used, limit } => JobError::fatal_with_code(
                "cpu_limit",
                format!(
                    "{what}{} of CPU time used, limit {}; the job's processes were killed",
                    format_cpu(used),
                    baton_core::duration::format(limit)
                ),
            ),
        };
        e.with_exit(Some(Exit::Signal("SIGKILL".into())))
    }
}

/// The `RLIMIT_CPU` of a process that may still use `left` of the job's CPU time:
/// (soft, hard) in whole seconds. The sampler kills the job at the limit; the soft
/// limit (SIGXCPU) is a backstop two seconds later, the hard one (SIGKILL) five.
pub(crate) fn cpu_rlimit(left: Duration) -> (u64, u64) {
    let soft = left.as_secs() + 2;
    (soft, soft + 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_names_the_limit_and_the_value_reached() {
        let m = LimitHit::Memory {
            used: 612_000_000,
            limit: 512_000_000,
            by_kernel: false,
        }
        .error("");
        assert_eq!(m.code(), "memory_limit");
        assert!(
            m.message().starts_with("612 MB used, limit 512 MB"),
            "{}",
            m.message()
        );
        assert!(!m.is_retryable());
        let c = LimitHit::Cpu {
            used: Duration::from_millis(10_400),
            limit: Duration::from_secs(10),
        }
        .error("step \"a\": ");
        assert_eq!(c.code(), "cpu_limit");
        assert!(
            c.message()
                .starts_with("step \"a\": 10.4 s of CPU time used, limit 10s"),
            "{}",
            c.message()
        );
        assert_eq!(cpu_rlimit(Duration::from_millis(10_400)), (12, 15));
    }
}
