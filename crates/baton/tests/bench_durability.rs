//! `baton bench` says what durability its figures were measured with (SQLite's own
//! `synchronous`, read back), and warns when its database sits on tmpfs.

use std::process::Command;

use serde_json::Value;

fn bench(db: &std::path::Path, durability: &str) -> (Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["bench", "--json", "--durability", durability, "--db"])
        .arg(db)
        .args(["latency", "--samples", "3", "--gap", "1ms"])
        .output()
        .expect("run baton bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let line = stdout.lines().last().expect("a JSON line");
    (serde_json::from_str(line).expect("JSON"), stderr)
}

#[test]
fn bench_lines_carry_sqlites_synchronous_setting() {
    let dir = tempfile::tempdir().expect("temp dir");
    for durability in ["full", "normal"] {
        let (report, _) = bench(&dir.path().join(format!("{durability}.db")), durability);
        assert_eq!(report["bench"], "latency");
        assert_eq!(report["synchronous"], durability, "{report}");
    }
}

#[test]
fn a_bench_on_tmpfs_warns_and_one_on_disk_does_not() {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    assert!(
        mounts.lines().any(
            |l| l.split(' ').nth(1) == Some("/dev/shm") && l.split(' ').nth(2) == Some("tmpfs")
        ),
        "this test needs /dev/shm on tmpfs"
    );
    let shm = tempfile::tempdir_in("/dev/shm").expect("temp dir on tmpfs");
    let (_, stderr) = bench(&shm.path().join("bench.db"), "full");
    assert!(
        stderr.contains("is on tmpfs (mounted at /dev/shm)"),
        "{stderr}"
    );

    // The build's own temporary folder lies under its target folder, on a disk: the
    // bench stays quiet about it.
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let (_, stderr) = bench(&disk.path().join("bench.db"), "full");
    assert!(!stderr.contains("tmpfs"), "{stderr}");
}
