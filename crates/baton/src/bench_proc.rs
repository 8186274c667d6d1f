//! What the benches read about their own process from `/proc`: resident memory and CPU
//! time. A figure that cannot be read is an error, never a zero that looks like a
//! result.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Linux reports CPU times in clock ticks of USER_HZ, which is 100.
pub const TICKS_PER_S: f64 = 100.0;

const STATUS: &str = "/proc/self/status";
const STAT: &str = "/proc/self/stat";

/// This process's resident memory in MB (one decimal), from `/proc/self/status`.
pub fn rss_mb() -> Result<f64> {
    rss_mb_from(Path::new(STATUS))
}

/// This process's CPU time (user and system) in clock ticks, from `/proc/self/stat`.
pub fn cpu_ticks() -> Result<u64> {
    cpu_ticks_from(Path::new(STAT))
}

/// This process's CPU time (user and system, every thread) in microseconds, from
/// `getrusage`: finer than the clock ticks of `/proc`.
pub fn cpu_us() -> Result<u64> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).context("cannot read this process's CPU time")?;
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    Ok(us(usage.user_time()) + us(usage.system_time()))
}

pub fn rss_mb_from(path: &Path) -> Result<f64> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} for the memory figure (this bench needs Linux /proc)",
            path.display()
        )
    })?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .with_context(|| format!("{} has no VmRSS line", path.display()))?;
    let kb: f64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("{}: cannot read VmRSS {:?}", path.display(), line.trim()))?;
    Ok((kb / 1024.0 * 10.0).round() / 10.0)
}

pub fn cpu_ticks_from(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} for the CPU figure (this bench needs Linux /proc)",
            path.display()
        )
    })?;
    // The command name (field 2) is in parentheses and may hold spaces: the fields
    // after the last ')' start with field 3.
    let Some(close) = text.rfind(')') else {
        bail!("{}: no command name in {:?}", path.display(), text.trim());
    };
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        let raw = fields
            .get(n - 3)
            .with_context(|| format!("{}: field {n} is missing", path.display()))?;
        raw.parse()
            .with_context(|| format!("{}: field {n} is {raw:?}, not a number", path.display()))
    };
    // utime and stime.
    Ok(field(14)? + field(15)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("status");
        let e = rss_mb_from(&missing).unwrap_err().to_string();
        assert!(e.contains("cannot read") && e.contains("status"), "{e}");
        let e = cpu_ticks_from(&dir.path().join("stat"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read") && e.contains("stat"), "{e}");
    }

    #[test]
    fn a_file_without_the_figure_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status");
        std::fs::write(&status, "Name:\tbaton\nVmPeak:\t 100 kB\n").unwrap();
        let e = rss_mb_from(&status).unwrap_err().to_string();
        assert!(e.contains("no VmRSS"), "{e}");
        let stat = dir.path().join("stat");
        std::fs::write(&stat, "42 (baton) S 1 42").unwrap();
        let e = cpu_ticks_from(&stat).unwrap_err().to_string();
        assert!(e.contains("field 14 is missing"), "{e}");
    }

    #[test]
    fn reads_the_figures() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status");
        std::fs::write(&status, "Name:\tbaton\nVmRSS:\t   20480 kB\n").unwrap();
        assert_eq!(rss_mb_from(&status).unwrap(), 20.0);
        let stat = dir.path().join("stat");
        // A command name with a space and a parenthesis.
        let fields: Vec<String> = (3..=20).map(|n| n.to_string()).collect();
        std::fs::write(&stat, format!("42 (a b) c) {}", fields.join(" "))).unwrap();
        assert_eq!(cpu_ticks_from(&stat).unwrap(), 14 + 15);
        // This process's own figures are real.
        assert!(rss_mb().unwrap() > 0.0);
        cpu_ticks().unwrap();
    }
}
