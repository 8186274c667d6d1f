//! `baton bench` as a user runs it: the real binary, real files, real HTTP.

mod support;

use std::process::Command;

use serde_json::Value;
use support::BIN;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("bench")
        .args(args)
        .env_remove("BATON_SERVER")
        .output()
        .unwrap()
}

/// A short soak: a child `baton serve`, SSE clients, the mixed load, and the check
/// that every client received every stored event.
#[test]
fn a_short_soak_delivers_every_event_to_every_client() {
    let out = bench(&[
        "soak",
        "--duration",
        "4s",
        "--probe",
        "3s",
        "--clients",
        "8",
        "--submitters",
        "4",
        "--json",
    ]);
    let r = report(&out);
    assert_eq!(r["bench"], "soak");
    assert_eq!(r["clients"], 8);
    assert_eq!(r["clients_complete"], 8);
    assert_eq!(r["missing_events"], 0);
    assert_eq!(r["duplicate_events"], 0);
    assert_eq!(r["failed"], 0);
    let events = r["events"].as_u64().unwrap();
    assert!(events > 100, "{r}");
    assert!(r["deliveries"].as_u64().unwrap() >= events * 8, "{r}");
    assert!(r["completed"].as_u64().unwrap() > 0, "{r}");
    assert!(r["capacity_per_s"].as_f64().unwrap() > 0.0, "{r}");
    for key in ["rss_start_mb", "rss_end_mb", "rss_max_mb"] {
        assert!(r[key].as_f64().unwrap() > 1.0, "{key}: {r}");
    }
}

#[test]
fn a_soak_refuses_settings_it_cannot_run() {
    let check = |args: &[&str], expected: &str| {
        let out = bench(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    };
    check(
        &["soak", "--clients", "0"],
        "--clients and --submitters must be at least 1",
    );
    check(
        &["soak", "--load-pct", "150"],
        "--load-pct must be above 0 and at most 100, not 150",
    );
    check(&["soak", "--rate", "0"], "--rate must be above 0");
    check(
        &["soak", "--duration", "0s"],
        "--duration must be at least 1s",
    );
}

/// A small submit bench: a child `baton serve`, single and batched submits over HTTP,
/// every job found again by id, and figures that are measured, never zero.
#[test]
fn a_small_submit_bench_reports_both_rates() {
    let out = bench(&[
        "submit",
        "--single-jobs",
        "50",
        "--batch-jobs",
        "2500",
        "--batch-size",
        "1000",
        "--threads",
        "2",
        "--json",
    ]);
    let r = report(&out);
    assert_eq!(r["bench"], "submit");
    assert_eq!(r["batch_jobs"], 2500);
    assert_eq!(r["batch_size"], 1000);
    assert_eq!(r["threads"], 2);
    assert_eq!(r["synchronous"], "full");
    for key in ["single_per_s", "batch_per_s", "single_ms", "batch_ms"] {
        assert!(r[key].as_f64().unwrap() > 0.0, "{key}: {r}");
    }
    // The CPU figures are read from /proc; for this few jobs they may round to zero
    // ticks, but they are always present as numbers.
    for key in [
        "single_server_cpu_us_per_job",
        "batch_server_cpu_us_per_job",
    ] {
        assert!(r[key].as_f64().is_some(), "{key}: {r}");
    }
}

#[test]
fn a_submit_bench_refuses_settings_it_cannot_run() {
    for (args, says) in [
        (&["submit", "--threads", "0"][..], "must be at least 1"),
        (
            &["submit", "--batch-size", "10001"][..],
            "--batch-size must be from 1 to 10000",
        ),
    ] {
        let out = bench(args);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// The one JSON line a successful `baton bench ... --json` printed.
fn report(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

/// `bench events` with its clients in a child process: every client gets every event,
/// and the figures are the clients' own readings.
#[test]
fn an_events_bench_with_its_clients_in_another_process_counts_every_delivery() {
    for mode in [&["--clients-process"][..], &[][..]] {
        let mut args = vec![
            "events",
            "--subscribers",
            "3",
            "--events",
            "20",
            "--gap",
            "1ms",
            "--json",
        ];
        args.extend_from_slice(mode);
        let r = report(&bench(&args));
        assert_eq!(r["bench"], "events");
        let process = !mode.is_empty();
        assert_eq!(r["clients"], if process { "process" } else { "in_process" });
        assert_eq!(r["subscribers"], 3);
        assert_eq!(r["deliveries"], 60, "{r}");
        let (p50, p99, max) = (
            r["p50_ms"].as_f64().unwrap(),
            r["p99_ms"].as_f64().unwrap(),
            r["max_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{r}");
        assert!(max < 30_000.0, "a latency from another clock: {r}");
        assert!(r["published_p50_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["cpu_us_per_delivery"].as_f64().unwrap() > 0.0, "{r}");
    }
}

#[test]
fn an_events_bench_refuses_settings_it_cannot_run() {
    for args in [
        &["events", "--subscribers", "0"][..],
        &["events", "--events", "0"][..],
        &["events", "--clients-process", "--client-threads", "0"][..],
    ] {
        let out = bench(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("must be at least 1"), "{args:?}: {stderr}");
    }
}

/// The clients' process fails, naming why, when it cannot open its streams.
#[test]
fn the_clients_process_says_why_it_cannot_open_a_stream() {
    let clients = |addr: &str| {
        Command::new(BIN)
            .args([
                "bench-clients",
                "--addr",
                addr,
                "--clients",
                "2",
                "--events",
                "1",
            ])
            .output()
            .unwrap()
    };
    // Nothing listens.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let out = clients(&addr);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot connect to {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("0 of 2 streams open"), "{stderr}");

    // Something answers, but not with a stream.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in server.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = [0u8; 1024];
            let _ = conn.read(&mut head);
            let _ = conn.write_all(b"HTTP/1.0 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let out = clients(&addr);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the server refused the stream: HTTP/1.0 404 Not Found"),
        "{stderr}"
    );
}

/// A small scale run: the figures at each size, and a restart in a process of its own
/// that found every queued job.
#[test]
fn a_small_scale_run_measures_each_size_and_a_restart() {
    let out = bench(&[
        "scale",
        "--sizes",
        "0,300",
        "--queued",
        "2000",
        "--samples",
        "2",
        "--json",
    ]);
    let r = report(&out);
    assert_eq!(r["bench"], "scale");
    let sizes = r["sizes"].as_array().expect("sizes");
    assert_eq!(sizes.len(), 2, "{r}");
    assert!(sizes[1]["finished"].as_u64().unwrap() >= 300, "{r}");
    for s in sizes {
        for key in ["claim_us_per_job", "list_ms", "stats_ms"] {
            assert!(s[key].as_f64().unwrap() > 0.0, "{key}: {r}");
        }
    }
    assert_eq!(r["queued"], 2000);
    assert!(r["ready_ms"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["rss_mb"].as_f64().unwrap() > 1.0, "{r}");
}

#[test]
fn a_scale_run_refuses_sizes_out_of_order() {
    let out = bench(&["scale", "--sizes", "1000,10", "--json"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--sizes ascending"), "{stderr}");
}

/// A small workers bench: one remote worker over a real WebSocket runs every job, and
/// the figures are measured, never zero.
#[test]
fn a_small_workers_bench_runs_every_job_through_a_remote_worker() {
    let out = bench(&[
        "workers",
        "--jobs",
        "500",
        "--concurrency",
        "16",
        "--samples",
        "20",
        "--json",
    ]);
    let r = report(&out);
    assert_eq!(r["bench"], "workers");
    assert_eq!(r["jobs"], 500);
    assert_eq!(r["concurrency"], 16);
    for key in [
        "end_to_end_per_s",
        "submit_to_start_p50_ms",
        "submit_to_start_p99_ms",
    ] {
        assert!(r[key].as_f64().unwrap() > 0.0, "{key}: {r}");
    }
    let out = bench(&["workers", "--concurrency", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be at least 1"));
}

/// `bench resources`: the sampler's cost is measured with every sleeping job measured,
/// and the sleepers do not outlive the bench.
#[test]
fn a_small_resources_bench_measures_the_sampler_and_cleans_up() {
    let sleepers = || {
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        String::from_utf8_lossy(&ps.stdout)
            .lines()
            .filter(|l| l.trim() == "sleep 600")
            .count()
    };
    let before = sleepers();
    let out = bench(&[
        "resources",
        "--jobs",
        "10",
        "--duration",
        "2s",
        "--sample-every",
        "200ms",
        "--json",
    ]);
    let r = report(&out);
    assert_eq!(r["bench"], "resources");
    assert_eq!(r["jobs"], 10);
    assert!(r["ticks"].as_u64().unwrap() >= 5, "{r}");
    assert!(r["processes_per_tick"].as_f64().unwrap() >= 10.0, "{r}");
    let pct = r["sampler_cpu_pct"].as_f64().unwrap();
    assert!(pct > 0.0 && pct < 50.0, "{r}");
    assert!(r["engine_cpu_pct"].as_f64().unwrap() >= pct, "{r}");
    // No `sleep 600` of the bench is left: their groups were killed at its end.
    assert!(sleepers() <= before, "sleeping jobs outlived the bench");
}

#[test]
fn a_resources_bench_refuses_settings_it_cannot_run() {
    for (args, expected) in [
        (
            &["resources", "--jobs", "0"][..],
            "--jobs must be at least 1",
        ),
        (
            &["resources", "--duration", "500ms"][..],
            "--duration must be at least 1s",
        ),
    ] {
        let out = bench(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
