//! A job's resources: the limits a command or pipeline job runs under (as clients
//! write them, and parsed), and the CPU time and memory its processes were measured
//! using.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;
use crate::spec::SpecError;
use crate::time::{Millis, rfc3339};

/// The smallest memory limit: below it no program starts.
pub const MIN_MEMORY: u64 = 1_000_000;
/// The fewest CPUs: a cgroup's CPU quota is at least 1 ms per 100 ms period.
pub const MIN_CPUS: f64 = 0.01;
/// The most CPUs a limit may name.
pub const MAX_CPUS: f64 = 4096.0;

/// A job's resource limits as the spec gives them (DESIGN.md section 6):
/// `{"memory": "512MB", "cpu_time": "10m", "cpus": 1.5}`. Every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    /// The most resident memory of the job's processes together: a number of bytes
    /// with a unit, `B`, `kB`, `MB`, `GB`, `TB` (powers of 1000) or `KiB`, `MiB`,
    /// `GiB`, `TiB` (powers of 1024), e.g. `"512MB"`, `"1GiB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// The most CPU time of the job's processes together, a duration (`"10m"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time: Option<String>,
    /// How many CPUs' worth of time the job may use at once (`1.5`); needs cgroups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
}

/// The mechanism that holds command and pipeline jobs to their `limits` on a server,
/// and how it holds each one (`job_limits` in `GET /api/resources`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LimitsReport {
    /// `"cgroup v2"`, `"cgroup v1"` (a cgroup per job with limits), or `"rlimit"`
    /// (`setrlimit` and the sampler killing a job's process group).
    pub mechanism: String,
    pub memory: String,
    pub cpu_time: String,
    pub cpus: String,
    /// `cpus` is held only by a cgroup's CPU quota.
    pub cpus_enforced: bool,
    /// The folders jobs' cgroups are made in.
    pub cgroups: Option<String>,
    /// Why cgroups are not used, when they are not.
    pub cgroups_unavailable: Option<String>,
    /// How often running jobs' processes are measured and checked (`"1s"`).
    pub sample_every: String,
    /// The least time between two `job.usage` events of a job (`"5s"`).
    pub usage_event_every: String,
}

/// Limits checked and parsed: what the engine enforces.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct JobLimits {
    pub memory: Option<u64>,
    pub cpu_time: Option<Duration>,
    pub cpus: Option<f64>,
}

impl JobLimits {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpu_time.is_none() && self.cpus.is_none()
    }
}

impl ResourceLimits {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpu_time.is_none() && self.cpus.is_none()
    }

    /// Checks every field; an error names it (`limits.memory`) and the value.
    /// `field` is the name of the whole object in errors (`limits`).
    pub fn parse(&self, field: &str) -> Result<JobLimits, SpecError> {
        let memory = match &self.memory {
            None => None,
            Some(s) => {
                let n = parse_bytes(s).map_err(|m| SpecError::new(format!("{field}.memory"), m))?;
                if n < MIN_MEMORY {
                    return Err(SpecError::new(
                        format!("{field}.memory"),
                        format!("{s:?} is less than the smallest limit, 1MB"),
                    ));
                }
                Some(n)
            }
        };
        let cpu_time = match &self.cpu_time {
            None => None,
            Some(s) => {
                let d = duration::parse(s)
                    .map_err(|m| SpecError::new(format!("{field}.cpu_time"), m))?;
                if d < Duration::from_millis(10) {
                    return Err(SpecError::new(
                        format!("{field}.cpu_time"),
                        format!("{s:?} is less than the smallest limit, 10ms"),
                    ));
                }
                Some(d)
            }
        };
        let cpus = match self.cpus {
            None => None,
            Some(n) if !n.is_finite() || n <= 0.0 => {
                return Err(SpecError::new(
                    format!("{field}.cpus"),
                    format!("{n} is not a positive number of CPUs"),
                ));
            }
            Some(n) if !(MIN_CPUS..=MAX_CPUS).contains(&n) => {
                return Err(SpecError::new(
                    format!("{field}.cpus"),
                    format!("{n} is out of range; give from {MIN_CPUS} to {MAX_CPUS} CPUs"),
                ));
            }
            Some(n) => Some(n),
        };
        Ok(JobLimits {
            memory,
            cpu_time,
            cpus,
        })
    }

    /// These limits, with each field they leave out taken from `defaults` (a queue's).
    pub fn or(&self, defaults: &ResourceLimits) -> ResourceLimits {
        ResourceLimits {
            memory: self.memory.clone().or_else(|| defaults.memory.clone()),
            cpu_time: self.cpu_time.clone().or_else(|| defaults.cpu_time.clone()),
            cpus: self.cpus.or(defaults.cpus),
        }
    }
}

/// Parses an amount of memory: digits (a decimal point allowed) and a unit.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let n: f64 = match number.parse() {
        Ok(n) if !number.is_empty() => n,
        _ => {
            return Err(format!(
                "{s:?} is not an amount of memory (expected a number and a unit, e.g. \"512MB\" or \"1GiB\")"
            ));
        }
    };
    let per: u64 = match unit {
        "B" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "" => {
            return Err(format!(
                "{s:?} has no unit (use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB, e.g. \"512MB\")"
            ));
        }
        other => {
            return Err(format!(
                "{s:?} has an unknown unit {other:?} (use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)"
            ));
        }
    };
    let bytes = n * per as f64;
    if bytes >= u64::MAX as f64 / 2.0 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(bytes.round() as u64)
}

/// An amount of memory for people: in MB (powers of 1000) with no decimals from 10 MB
/// up (`612 MB`), one decimal below, and in GB from 10 GB.
pub fn format_bytes(n: u64) -> String {
    let mb = n as f64 / 1e6;
    if mb >= 10_000.0 {
        format!("{:.1} GB", mb / 1000.0)
    } else if mb >= 10.0 {
        format!("{mb:.0} MB")
    } else {
        format!("{mb:.1} MB")
    }
}

/// CPU time for people: seconds, with two decimals below 10 s (`1.04 s`) and one
/// above (`12.3 s`).
pub fn format_cpu(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

/// What a command or pipeline job's processes used, as last measured: their CPU time
/// (user and system, every process of the job, children included) and their resident
/// memory together, now and at its highest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    /// The attempt measured.
    pub attempt: u32,
    /// CPU time used by the attempt's processes so far, in milliseconds.
    pub cpu_ms: u64,
    /// Resident memory of its processes at the last sample, in bytes.
    pub rss_bytes: u64,
    /// The most resident memory any sample saw, in bytes.
    pub peak_rss_bytes: u64,
    /// When it was measured.
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<u64, &str>) {
        match (parse_bytes(input), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{input:?}"),
            (Err(got), Err(part)) => assert!(got.contains(part), "{input:?}: {got} lacks {part}"),
            (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn memory_amounts_parse() {
        check("512MB", Ok(512_000_000));
        check("1GiB", Ok(1 << 30));
        check("1.5GB", Ok(1_500_000_000));
        check(" 64 MiB ", Ok(64 << 20));
        check("100kB", Ok(100_000));
        check("100KB", Ok(100_000));
        check("2048B", Ok(2048));
        check("512", Err("no unit"));
        check("512mb", Err("unknown unit \"mb\""));
        check("MB", Err("not an amount"));
        check("-5MB", Err("not an amount"));
        check("1.2.3MB", Err("not an amount"));
        check("99999999999TB", Err("too large"));
    }

    fn limits(v: serde_json::Value) -> Result<JobLimits, SpecError> {
        serde_json::from_value::<ResourceLimits>(v)
            .unwrap()
            .parse("limits")
    }

    #[test]
    fn bad_limits_name_the_field() {
        let cases = [
            (
                serde_json::json!({"memory": "lots"}),
                "limits.memory",
                "lots",
            ),
            (
                serde_json::json!({"memory": "10kB"}),
                "limits.memory",
                "1MB",
            ),
            (
                serde_json::json!({"cpu_time": "10"}),
                "limits.cpu_time",
                "no unit",
            ),
            (
                serde_json::json!({"cpu_time": "1ms"}),
                "limits.cpu_time",
                "10ms",
            ),
            (serde_json::json!({"cpus": 0}), "limits.cpus", "positive"),
            (serde_json::json!({"cpus": -1.5}), "limits.cpus", "positive"),
            (
                serde_json::json!({"cpus": 0.001}),
                "limits.cpus",
                "out of range",
            ),
            (
                serde_json::json!({"cpus": 5000}),
                "limits.cpus",
                "out of range",
            ),
        ];
        for (v, field, part) in cases {
            let e = limits(v.clone()).expect_err(&v.to_string());
            assert_eq!(e.field, field, "{v}");
            assert!(e.message.contains(part), "{v}: {e} lacks {part}");
        }
        let ok =
            limits(serde_json::json!({"memory": "512MB", "cpu_time": "10m", "cpus": 1.5})).unwrap();
        assert_eq!(
            ok,
            JobLimits {
                memory: Some(512_000_000),
                cpu_time: Some(Duration::from_secs(600)),
                cpus: Some(1.5)
            }
        );
    }

    #[test]
    fn queue_defaults_fill_what_the_job_leaves_out() {
        let job = ResourceLimits {
            memory: Some("1GB".into()),
            ..ResourceLimits::default()
        };
        let queue = ResourceLimits {
            memory: Some("2GB".into()),
            cpu_time: Some("1h".into()),
            cpus: None,
        };
        let merged = job.or(&queue);
        assert_eq!(merged.memory.as_deref(), Some("1GB"));
        assert_eq!(merged.cpu_time.as_deref(), Some("1h"));
        assert_eq!(merged.cpus, None);
    }

    #[test]
    fn amounts_format_for_people() {
        assert_eq!(format_bytes(612_000_000), "612 MB");
        assert_eq!(format_bytes(5_500_000), "5.5 MB");
        assert_eq!(format_bytes(12_300_000_000), "12.3 GB");
        assert_eq!(format_cpu(Duration::from_millis(12_345)), "12.3 s");
        assert_eq!(format_cpu(Duration::from_millis(1_040)), "1.04 s");
    }
}
