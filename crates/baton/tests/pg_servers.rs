//! Two real `baton serve` processes on one PostgreSQL database: jobs submitted to one
//! run on both, each once, and a stop sent to one server ends a job that the other
//! runs.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{json, ok, start_on};
use tempfile::TempDir;

/// The test database (see `scripts/test`) and a schema of its own for `test`, as a
/// URL that `baton serve` takes, and the plain database URL.
fn database(test: &str) -> (String, String) {
    let url = std::env::var("BATON_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!("BATON_TEST_POSTGRES is not set: run the tests with `bash scripts/test`, which starts PostgreSQL and creates a test database")
    });
    let schema = schema(test);
    psql(
        &url,
        &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"),
    );
    let sep = if url.contains('?') { '&' } else { '?' };
    (format!("{url}{sep}options=-csearch_path%3D{schema}"), url)
}

fn schema(test: &str) -> String {
    format!("serve_{test}_{}", std::process::id())
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-qAtc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn wait_for(what: &str, done: impl FnMut() -> bool) {
    wait_up_to(Duration::from_secs(30), what, done)
}

fn wait_up_to(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_servers_share_the_queue_and_a_stop_reaches_the_server_that_runs_the_job() {
    let (store, db) = database("share");
    let config = "[queues]\ndefault = 2\n";
    let a = start_on(TempDir::new().unwrap(), &store, Some(config));
    let b = start_on(TempDir::new().unwrap(), &store, Some(config));
    let schema = schema("share");
    let q = |sql: &str| psql(&db, &format!("SET search_path TO {schema}; {sql}"));

    // Twelve jobs submitted to A alone: B learns of them and takes its share.
    for _ in 0..12 {
        ok(&support::baton(
            &a,
            &["submit", "--shell", "--", "sleep 0.3"],
        ));
    }
    wait_for("the twelve jobs to complete", || {
        q("SELECT COUNT(*) FROM jobs WHERE state = 'completed'") == "12"
    });
    assert_eq!(
        q("SELECT COUNT(DISTINCT server_id) || ' ' || MAX(attempt) FROM jobs"),
        "2 1",
        "both servers ran jobs, each job once"
    );

    // A long job, stopped through the server that does not run it.
    let job = json(&b, &["submit", "--shell", "--", "sleep 60"]);
    let id = job["id"].as_str().expect("id").to_owned();
    let state = || {
        q(&format!(
            "SELECT state || ' ' || COALESCE(pgid, 0) FROM jobs WHERE id = '{id}'"
        ))
    };
    wait_for("the job to run with its process", || {
        let s = state();
        s.starts_with("running ") && !s.ends_with(" 0")
    });
    let pgid = q(&format!("SELECT pgid FROM jobs WHERE id = '{id}'"));
    let runner = q(&format!(
        "SELECT url FROM servers WHERE id = (SELECT server_id FROM jobs WHERE id = '{id}')"
    ));
    let other = if runner == a.url { &b } else { &a };
    assert_ne!(runner, other.url);
    ok(&support::baton(other, &["stop", &id]));
    wait_for("the stopped job to end", || {
        q(&format!("SELECT state FROM jobs WHERE id = '{id}'")) == "cancelled"
    });
    wait_for("the job's process to be gone", || {
        !std::path::Path::new(&format!("/proc/{pgid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pgid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
    });
}

/// Reads a server's event stream (SSE, through curl) into a list of event ids.
fn follow_events(
    url: &str,
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
) {
    use std::io::BufRead;
    let mut curl = Command::new("curl")
        .args(["-sN", &format!("{url}/api/events")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl runs");
    let ids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = curl.stdout.take().expect("stdout");
    let seen = ids.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(id) = line.strip_prefix("id:").and_then(|v| v.trim().parse().ok()) {
                seen.lock().unwrap().push(id);
            }
        }
    });
    (curl, ids)
}

/// Three servers share 340 jobs (checkpointing commands and short ones, pipelines,
/// and a workflow whose last job waits for eighteen); two are
/// killed with SIGKILL, one after the other, while they run jobs. The survivor takes
/// the lead, finds them gone, kills their leftover processes and recovers their jobs,
/// which resume from their checkpoints: every job completes exactly once, no job ever
/// had two attempts at once, and a client streaming events from the survivor saw every
/// event, in order, with no gap and no duplicate.
#[test]
fn jobs_of_killed_servers_resume_elsewhere_once_and_a_survivors_stream_misses_nothing() {
    let (store, db) = database("kill");
    let schema = schema("kill");
    let q = |sql: &str| psql(&db, &format!("SET search_path TO {schema}; {sql}"));
    let config = "heartbeat = \"500ms\"\n[queues]\ndefault = 8\n";
    let a = start_on(TempDir::new().unwrap(), &store, Some(config));
    let b = start_on(TempDir::new().unwrap(), &store, Some(config));
    let c = start_on(TempDir::new().unwrap(), &store, Some(config));
    let (mut curl, seen) = follow_events(&c.url);
    std::thread::sleep(Duration::from_millis(300));

    // Each checkpointing job counts to 8, a checkpoint a step, and on a resume
    // starts from its checkpoint; its result says where it started.
    let counting = r#"i=$(printf %s "$BATON_CHECKPOINT" | tr -dc 0-9); i=${i:-0}; from=$i; while [ $i -lt 8 ]; do i=$((i+1)); echo "::checkpoint {\"i\": $i}"; sleep 0.1; done; echo "::result {\"from\": $from}""#;
    let mut jobs = Vec::new();
    for n in 0..300 {
        let command = if n % 3 == 0 { counting } else { "sleep 0.05" };
        jobs.push(serde_json::json!({"id": format!("k-{n}"), "kind": "command", "command": ["sh", "-c", command], "max_recoveries": 5}));
    }
    // Pipelines whose first step checkpoints as it counts.
    for n in 0..20 {
        jobs.push(
            serde_json::json!({"id": format!("p-{n}"), "kind": "pipeline", "max_recoveries": 5,
            "steps": [{"name": "count", "command": ["sh", "-c", counting]},
                      {"name": "after", "command": ["sh", "-c", "sleep 0.05"]}]}),
        );
    }
    // A workflow: a root, eighteen jobs after it, and one after all of those.
    let mut nodes = serde_json::Map::new();
    nodes.insert("root".into(), serde_json::json!({"kind": "command", "command": ["sh", "-c", "sleep 0.2"], "max_recoveries": 5}));
    for i in 0..18 {
        nodes.insert(format!("mid-{i}"), serde_json::json!({"kind": "command", "command": ["sh", "-c", counting], "depends_on": ["root"], "max_recoveries": 5}));
    }
    let mids: Vec<String> = (0..18).map(|i| format!("mid-{i}")).collect();
    nodes.insert("end".into(), serde_json::json!({"kind": "command", "command": ["true"], "depends_on": mids, "max_recoveries": 5}));
    let body = serde_json::json!({"id": "wf", "jobs": nodes}).to_string();
    let out = Command::new("curl")
        .args([
            "-sf",
            &format!("{}/api/workflows", c.url),
            "-H",
            "content-type: application/json",
            "-d",
            &body,
        ])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "workflow submit: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for (server, part) in [&a, &b].into_iter().zip(jobs.chunks(160)) {
        let body = serde_json::json!({"jobs": part}).to_string();
        let out = Command::new("curl")
            .args([
                "-sf",
                &format!("{}/api/jobs/batch", server.url),
                "-H",
                "content-type: application/json",
                "-d",
                &body,
            ])
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "batch submit: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let done = || {
        q("SELECT COUNT(*) FROM jobs WHERE state = 'completed'")
            .parse::<u64>()
            .unwrap()
    };
    wait_for("a first share of jobs to complete", || done() >= 40);
    let mut b = b;
    b.child.kill().expect("SIGKILL b");
    b.child.wait().expect("b ends");
    wait_for("more jobs to complete", || done() >= 120);
    let mut a = a;
    a.child.kill().expect("SIGKILL a");
    a.child.wait().expect("a ends");
    wait_up_to(Duration::from_secs(300), "every job to complete", || {
        done() >= 340
    });

    // No job was ever run by two attempts at once: its events alternate between a
    // start and the end of that attempt.
    let log = q(
        "SELECT job_id || ' ' || type FROM events WHERE job_id IS NOT NULL ORDER BY job_key, job_seq",
    );
    let mut open: std::collections::HashMap<&str, bool> = Default::default();
    let mut completions: std::collections::HashMap<&str, u32> = Default::default();
    for line in log.lines() {
        let (job, kind) = line.split_once(' ').unwrap();
        let running = open.entry(job).or_default();
        match kind {
            "job.started" => {
                assert!(!*running, "{job} was started while an attempt of it ran");
                *running = true;
            }
            "job.crashed" | "job.completed" | "job.failed" | "job.cancelled" | "job.retrying"
            | "job.queued" => {
                *running = false;
            }
            _ => {}
        }
        if kind == "job.completed" {
            *completions.entry(job).or_default() += 1;
        }
    }
    assert_eq!(completions.len(), 340);
    assert!(
        completions.values().all(|n| *n == 1),
        "each job completed once"
    );
    assert_eq!(
        q(
            "SELECT COUNT(*) FROM events e JOIN jobs j ON j.key = e.job_key \
           WHERE j.workflow_id = 'wf' AND j.workflow_name = 'end' AND e.type = 'job.queued'"
        ),
        "1",
        "the workflow's last job was queued once, when the last of its eighteen ended"
    );
    assert_eq!(
        q("SELECT COUNT(*) FROM jobs WHERE kind = 'pipeline' AND state = 'completed'"),
        "20"
    );
    let crashed: u64 = q("SELECT COUNT(DISTINCT job_id) FROM events WHERE type = 'job.crashed'")
        .parse()
        .unwrap();
    assert!(crashed > 0, "the killed servers were running jobs");
    let resumed: u64 = q("SELECT COUNT(*) FROM jobs WHERE (result->>'from')::int > 0")
        .parse()
        .unwrap();
    assert!(resumed > 0, "a recovered job resumed from its checkpoint");
    assert_eq!(
        q("SELECT COUNT(*) FROM servers WHERE stopped_at IS NOT NULL"),
        "2",
        "both killed servers are marked down"
    );

    // The survivor's stream: every event, in order, once.
    let last: u64 = q("SELECT upto FROM sequence_mark").parse().unwrap();
    wait_for("the stream to reach the last event", || {
        seen.lock().unwrap().last().is_some_and(|id| *id >= last)
    });
    let _ = curl.kill();
    let ids = seen.lock().unwrap().clone();
    for w in ids.windows(2) {
        assert_eq!(w[1], w[0] + 1, "the stream skipped or repeated an event");
    }
    drop(c);
}

/// A TCP proxy to the database that the test can cut (every connection dropped, new
/// ones refused) and restore: the database lost and found again.
struct Proxy {
    addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let (o, c, up) = (open.clone(), conns.clone(), upstream.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the database is gone
                }
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
                let mut list = c.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, open, conns }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn status(url: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "5",
            url,
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The database goes away under a running server: `/readyz` says the server is not
/// ready, a submit is refused (503, nothing acknowledged), and once the database is
/// back the server is ready again by itself and every job it acknowledged completes.
#[test]
fn a_lost_database_makes_the_server_unready_and_loses_nothing_acknowledged() {
    let (_, db) = database("lost");
    let schema = schema("lost");
    let q = |sql: &str| psql(&db, &format!("SET search_path TO {schema}; {sql}"));
    let proxy = Proxy::start("127.0.0.1:5432");
    let base = db
        .rsplit_once('/')
        .map(|(_, name)| name)
        .unwrap_or("test")
        .to_owned();
    let through = format!(
        "postgres://postgres@{}/{base}?options=-csearch_path%3D{schema}",
        proxy.addr
    );
    let s = start_on(
        TempDir::new().unwrap(),
        &through,
        Some("heartbeat = \"300ms\"\n"),
    );
    assert_eq!(status(&format!("{}/readyz", s.url)), "200");
    let mut acknowledged = Vec::new();
    for n in 0..8 {
        let id = format!("before-{n}");
        let out = support::baton(&s, &["submit", "--id", &id, "--shell", "--", "sleep 5"]);
        ok(&out);
        acknowledged.push(id);
    }
    // Running, with their processes recorded: the cut finds every attempt under way.
    wait_for("the jobs to run", || {
        q("SELECT COUNT(*) FROM jobs WHERE state = 'running' AND pgid IS NOT NULL") == "8"
    });

    proxy.cut();
    wait_for("/readyz to fail", || {
        status(&format!("{}/readyz", s.url)) == "503"
    });
    // Three missed heartbeats: the server stops its attempts rather than run them
    // beside replacements another server could have started.
    std::thread::sleep(Duration::from_millis(1500));
    let refused = support::baton(&s, &["submit", "--id", "during", "--shell", "--", "true"]);
    assert!(
        !refused.status.success(),
        "a submit without a database is refused"
    );

    proxy.restore();
    wait_for("/readyz to pass again", || {
        status(&format!("{}/readyz", s.url)) == "200"
    });
    ok(&support::baton(
        &s,
        &["submit", "--id", "after", "--shell", "--", "true"],
    ));
    acknowledged.push("after".into());
    wait_up_to(
        Duration::from_secs(60),
        "every acknowledged job to complete",
        || {
            let list = acknowledged
                .iter()
                .map(|i| format!("'{i}'"))
                .collect::<Vec<_>>()
                .join(",");
            q(&format!(
                "SELECT COUNT(*) FROM jobs WHERE state = 'completed' AND id IN ({list})"
            )) == acknowledged.len().to_string()
        },
    );
    // An attempt that was still starting when the server stopped the others runs to
    // its end instead; each of the others was recovered and ran again.
    let recovered: u32 =
        q("SELECT COUNT(DISTINCT job_id) FROM events WHERE type = 'job.recovered'")
            .parse()
            .unwrap();
    assert!(
        recovered >= 1,
        "the stopped attempts' jobs were recovered and ran again"
    );
    assert_eq!(
        q("SELECT COUNT(*) FROM events WHERE type = 'job.completed'"),
        acknowledged.len().to_string(),
        "each job completed once"
    );
    assert_eq!(
        q("SELECT COUNT(*) FROM jobs WHERE attempt > 1"),
        "0",
        "a recovery continues the interrupted attempt"
    );
}

/// A schedule made through one of three servers fires every second on all of them
/// alike, and each run fires once: also when the server that leads is killed.
#[test]
fn a_schedule_fires_each_run_once_across_three_servers_and_a_killed_leader() {
    let (store, db) = database("sched");
    let schema = schema("sched");
    let q = |sql: &str| psql(&db, &format!("SET search_path TO {schema}; {sql}"));
    let config = "heartbeat = \"500ms\"\n";
    let mut servers: Vec<_> = (0..3)
        .map(|_| start_on(TempDir::new().unwrap(), &store, Some(config)))
        .collect();
    ok(&support::baton(
        &servers[1],
        &["schedule", "add", "tick", "--every", "1s", "--", "true"],
    ));
    wait_for("a few fires", || {
        q("SELECT COUNT(*) FROM schedule_fires")
            .parse::<u32>()
            .unwrap()
            >= 3
    });
    // The leader dies, and so does the server the schedule was made through: a
    // survivor fires from what it read in the store.
    let leader = q("SELECT url FROM servers WHERE id = (SELECT server_id FROM leader)");
    let term: u64 = q("SELECT term FROM leader").parse().unwrap();
    let maker = servers[1].url.clone();
    servers.retain_mut(|s| {
        let dies = s.url == leader || s.url == maker;
        if dies {
            s.child.kill().expect("SIGKILL");
            s.child.wait().expect("it ends");
        }
        !dies
    });
    assert!(!servers.is_empty() && servers.len() < 3);
    let before: u32 = q("SELECT COUNT(*) FROM schedule_fires").parse().unwrap();
    wait_for("fires after the leader died", || {
        q("SELECT COUNT(*) FROM schedule_fires")
            .parse::<u32>()
            .unwrap()
            >= before + 4
    });
    // A survivor took the lease, under a new term, and fires since.
    assert!(q("SELECT term FROM leader").parse::<u64>().unwrap() > term);
    let now_leading = q("SELECT url FROM servers WHERE id = (SELECT server_id FROM leader)");
    assert!(
        servers.iter().any(|s| s.url == now_leading),
        "a survivor leads"
    );
    assert_eq!(
        q("SELECT COUNT(*) - COUNT(DISTINCT scheduled_for) FROM schedule_fires"),
        "0",
        "no run fired twice"
    );
    assert_eq!(
        q("SELECT COUNT(*) FROM jobs WHERE schedule_id = 'tick'"),
        q("SELECT COUNT(*) FROM schedule_fires WHERE job_id IS NOT NULL"),
        "one job a fire"
    );
    drop(servers);
}

/// `baton bench throughput` and `latency` on PostgreSQL, with two servers: every job
/// ran, on both servers, and the figures are there; the embedded store refuses
/// `--servers`.
#[test]
fn the_postgres_benches_run_on_several_servers() {
    let url = std::env::var("BATON_TEST_POSTGRES").expect("BATON_TEST_POSTGRES");
    let run = |args: &[&str]| {
        let out = Command::new(support::BIN)
            .arg("bench")
            .args(args)
            .output()
            .expect("baton bench runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str::<serde_json::Value>(String::from_utf8_lossy(&out.stdout).trim())
            .expect("one JSON line")
    };
    let t = run(&[
        "throughput",
        "--store",
        &url,
        "--servers",
        "2",
        "--jobs",
        "400",
        "--workers",
        "16",
        "--json",
    ]);
    assert_eq!(t["store"], "postgres");
    assert_eq!(t["servers_that_ran_jobs"], 2, "{t}");
    assert!(t["end_to_end_per_s"].as_f64().unwrap() > 0.0, "{t}");
    let l = run(&[
        "latency",
        "--store",
        &url,
        "--servers",
        "2",
        "--samples",
        "20",
        "--json",
    ]);
    assert!(
        l["cross_server_event_p99_ms"].as_f64().unwrap() > 0.0,
        "{l}"
    );
    assert!(l["p99_ms"].as_f64().unwrap() > 0.0, "{l}");

    let refused = Command::new(support::BIN)
        .args(["bench", "latency", "--servers", "2", "--samples", "5"])
        .output()
        .expect("baton bench runs");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--servers needs --store postgres://"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
