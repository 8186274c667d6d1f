//! What `/proc` tells about processes: one process's state and times, and the CPU time
//! and resident memory of whole process groups, read in one pass over `/proc`. A leaf:
//! the command runner, the usage sampler and the cgroups code all read through it.

use std::collections::HashMap;
use std::io::Read;

/// What `/proc/PID/stat` tells about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `T` (stopped), `Z` (zombie), ...
    pub state: char,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// User plus system CPU time of its children that it waited for, in clock ticks.
    pub children_cpu_ticks: u64,
    /// Clock ticks since boot when the process started.
    pub start_time: u64,
    pub pgid: i32,
    /// Resident memory, in pages.
    pub rss_pages: u64,
}

/// Reads `/proc/PID/stat`; `None` when the process does not exist.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses the text of `/proc/PID/stat`.
pub(crate) fn parse_stat(text: &[u8]) -> Option<ProcStat> {
    // The command name (field 2) is in parentheses and may hold spaces: the fields
    // after the last ')' start with field 3, the state.
    let close = text.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(&text[close + 1..]).ok()?;
    let mut f = rest.split_ascii_whitespace();
    let state = f.next()?.chars().next()?; // 3
    let pgid = f.nth(1)?.parse().ok()?; // 5
    let utime: u64 = f.nth(8)?.parse().ok()?; // 14
    let stime: u64 = f.next()?.parse().ok()?; // 15
    let cutime: u64 = f.next()?.parse().ok()?; // 16
    let cstime: u64 = f.next()?.parse().ok()?; // 17
    let start_time = f.nth(4)?.parse().ok()?; // 22
    let _vsize = f.next()?; // 23
    let rss_pages: i64 = f.next()?.parse().ok()?; // 24
    Some(ProcStat {
        state,
        cpu_ticks: utime + stime,
        children_cpu_ticks: cutime + cstime,
        start_time,
        pgid,
        rss_pages: rss_pages.max(0) as u64,
    })
}

/// What the live processes of one process group use together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GroupTotals {
    pub processes: u32,
    /// CPU time of its processes and of the children they waited for, in ticks.
    pub cpu_ticks: u64,
    pub rss_pages: u64,
}

/// Reads every process once and adds up the processes of the groups in `groups`
/// (group id → totals, reset first). `buf` is kept between calls, so a pass allocates
/// little. Returns how many processes it read.
pub(crate) fn scan_groups(groups: &mut HashMap<i32, GroupTotals>, buf: &mut Vec<u8>) -> usize {
    for totals in groups.values_mut() {
        *totals = GroupTotals::default();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut path = String::with_capacity(32);
    let mut read = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        path.clear();
        path.push_str("/proc/");
        path.push_str(pid);
        path.push_str("/stat");
        buf.clear();
        // A process that ended since the listing is simply not counted.
        let Ok(mut file) = std::fs::File::open(&path) else {
            continue;
        };
        if file.read_to_end(buf).is_err() {
            continue;
        }
        read += 1;
        let Some(stat) = parse_stat(buf) else {
            continue;
        };
        if let Some(totals) = groups.get_mut(&stat.pgid) {
            totals.processes += 1;
            totals.cpu_ticks += stat.cpu_ticks + stat.children_cpu_ticks;
            totals.rss_pages += stat.rss_pages;
        }
    }
    read
}

/// Bytes in a memory page.
pub(crate) fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |n| n as u64)
}

/// Clock ticks a second, the unit of `/proc`'s CPU times.
pub(crate) fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |n| n.max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_reads_this_process() {
        let me = proc_stat(std::process::id()).expect("this process exists");
        assert!(me.start_time > 0);
        assert!(me.rss_pages > 0);
        assert!(matches!(me.state, 'R' | 'S'), "{me:?}");
        assert_eq!(proc_stat(u32::MAX), None);
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_skipped() {
        let text = b"42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 12345 1000000 250 18446744073709551615";
        let s = parse_stat(text).expect("parses");
        assert_eq!(
            s,
            ProcStat {
                state: 'S',
                cpu_ticks: 10,
                children_cpu_ticks: 3,
                start_time: 12345,
                pgid: 42,
                rss_pages: 250,
            }
        );
    }

    #[test]
    fn a_scan_adds_up_the_groups_it_is_asked_about() {
        let me = proc_stat(std::process::id()).unwrap();
        let mut groups = HashMap::from([
            (me.pgid, GroupTotals::default()),
            (-7, GroupTotals::default()),
        ]);
        let read = scan_groups(&mut groups, &mut Vec::new());
        assert!(read > 0);
        assert!(groups[&me.pgid].processes >= 1);
        assert!(groups[&me.pgid].rss_pages >= me.rss_pages);
        assert_eq!(groups[&-7], GroupTotals::default());
    }
}
