//! Where a bench's database lives. On tmpfs a commit never reaches a disk, so the
//! figures say nothing about durable writes: the bench says so on stderr.

use std::path::{Path, PathBuf};

/// Warns on stderr when the database file `db` (which may not exist yet) sits on tmpfs.
pub fn warn_if_tmpfs(db: &Path) {
    let dir = match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(dir) = std::fs::canonicalize(&dir) else {
        return;
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    if let Some((mount, fstype)) = filesystem_of(&mounts, &dir)
        && fstype == "tmpfs"
    {
        eprintln!(
            "warning: the bench database {} is on tmpfs (mounted at {}): commits never \
             reach a disk, so these figures overstate what a durable store does; pass \
             --db with a path on a disk",
            db.display(),
            mount.display()
        );
    }
}

/// The mount point and file system type that hold `dir` (an absolute, canonical path),
/// from the text of `/proc/mounts`: the longest mount point containing it.
pub fn filesystem_of(mounts: &str, dir: &Path) -> Option<(PathBuf, String)> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            Some((PathBuf::from(unescape(point)), fstype.to_owned()))
        })
        .filter(|(point, _)| dir.starts_with(point))
        // Later mounts hide earlier ones at the same point: keep the last of the longest.
        .max_by_key(|(point, _)| point.components().count())
}

/// `/proc/mounts` writes a space, tab, newline or backslash in a path as `\ooo`.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(b) => {
                out.push(char::from(b));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw,relatime 0 0
tmpfs /mnt/my\\040disk tmpfs rw 0 0
/dev/vdb /mnt/my\\040disk ext4 rw 0 0
";

    fn check(dir: &str, expected: (&str, &str)) {
        let found = filesystem_of(MOUNTS, Path::new(dir)).expect("a mount");
        assert_eq!(
            (found.0.to_str().unwrap_or_default(), found.1.as_str()),
            expected,
            "{dir}"
        );
    }

    #[test]
    fn the_longest_and_latest_mount_point_holding_a_folder_wins() {
        check("/dev/shm/bench", ("/dev/shm", "tmpfs"));
        check("/dev/shmem", ("/", "ext4"));
        check("/tmp/x", ("/", "ext4"));
        check("/mnt/my disk/a", ("/mnt/my disk", "ext4"));
    }
}
