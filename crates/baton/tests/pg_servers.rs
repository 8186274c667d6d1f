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

/// Posts `body` to `path` of the server at `url` (through curl, the body on its
/// standard input: a batch is too long for an argument) and returns the answer.
fn post(url: &str, path: &str, body: &serde_json::Value) -> serde_json::Value {
    use std::io::Write;
    let mut curl = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("{url}{path}"),
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl runs");
    curl.stdin
        .take()
        .expect("stdin")
        .write_all(body.to_string().as_bytes())
        .expect("the body is sent");
    let out = curl.wait_with_output().expect("curl ends");
    let text = String::from_utf8_lossy(&out.stdout);
    let (answer, code) = text.trim_end().rsplit_once('\n').unwrap_or(("", &text));
    assert!(
        code.starts_with('2'),
        "POST {path}: {code} {}",
        answer.chars().take(2000).collect::<String>()
    );
    serde_json::from_str(answer).unwrap_or(serde_json::Value::Null)
}

/// Milliseconds since the epoch, as the servers stamp their events.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One attempt of a job, as its fencing records tell it: the claim that took the next
/// fencing token (`job.started`, naming the server) and the event that ended it.
#[derive(Debug)]
struct Attempt {
    server: String,
    start: i64,
    /// The latest of the attempt's own fenced writes (checkpoints, logs, progress).
    last_write: i64,
    end: Option<(String, i64)>,
}

/// Audits the fencing records of every job, given as lines of its id, its fencing
/// token, then each event's type, time and `server_id` in the job's order; `died`: the
/// killed servers and when they died. Panics at the first record that breaks the
/// rules (see the kill test); returns how many jobs there were, how many ran more than
/// one attempt, and each job's completions.
fn audit_fencing<'a>(
    log: &'a str,
    died: &std::collections::HashMap<String, i64>,
) -> (usize, usize, std::collections::HashMap<&'a str, u32>) {
    let mut attempts: std::collections::BTreeMap<&str, (u64, Vec<Attempt>)> = Default::default();
    let mut completions: std::collections::HashMap<&str, u32> = Default::default();
    for line in log.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let [job, fence, kind, at, server] = f[..] else {
            panic!("an unreadable line {line:?}");
        };
        let at: i64 = at.parse().unwrap();
        let (_, list) = attempts
            .entry(job)
            .or_insert_with(|| (fence.parse().unwrap(), Vec::new()));
        let open = list.last_mut().filter(|a| a.end.is_none());
        match kind {
            "job.started" => {
                assert!(
                    open.is_none(),
                    "{job} was started while an attempt of it ran: {list:?}"
                );
                // The attempt before ended first: by its outcome, or, when it crashed,
                // by its server's death (the crash is recorded later, by the server
                // that found it gone, and stamped by that server's clock before its
                // write: a claim stamped a moment earlier may still take the job).
                if let Some(last) = list.last() {
                    let (how, ended) = last.end.as_ref().unwrap();
                    let over = if how == "job.crashed" {
                        died[&last.server]
                    } else {
                        *ended
                    };
                    assert!(
                        over <= at && last.last_write <= at,
                        "{job}: an attempt started at {at} before the one before it ended: {list:?}"
                    );
                }
                list.push(Attempt {
                    server: server.to_owned(),
                    start: at,
                    last_write: at,
                    end: None,
                });
            }
            "job.completed" | "job.failed" | "job.cancelled" | "job.retrying" | "job.crashed"
            | "job.queued" => {
                if let Some(open) = open {
                    if kind == "job.crashed" {
                        assert_eq!(
                            open.server, server,
                            "{job}: the crash names the server of the attempt"
                        );
                        assert!(
                            died.contains_key(server),
                            "{job} crashed on {server}, a server that lives"
                        );
                    } else {
                        open.last_write = open.last_write.max(at);
                    }
                    open.end = Some((kind.to_owned(), at));
                } else {
                    assert!(
                        !matches!(kind, "job.completed" | "job.failed" | "job.crashed"),
                        "{job}: an outcome {kind} with no attempt under way: {list:?}"
                    );
                }
                if kind == "job.completed" {
                    *completions.entry(job).or_default() += 1;
                }
            }
            "job.checkpoint" | "job.log" | "job.output" | "job.progress" | "job.step" => {
                let Some(open) = open else {
                    panic!("{job}: a fenced write ({kind} at {at}) outside any attempt: {list:?}");
                };
                open.last_write = open.last_write.max(at);
            }
            _ => {}
        }
    }
    let mut resumed_elsewhere = 0;
    for (job, (fence, list)) in &attempts {
        assert_eq!(
            *fence,
            list.len() as u64,
            "{job}: one start for each fencing token given: {list:?}"
        );
        let last = list.last().expect("an attempt");
        assert_eq!(
            last.end.as_ref().map(|e| e.0.as_str()),
            Some("job.completed"),
            "{job}: the attempt holding the last token completed it: {list:?}"
        );
        for a in list {
            if let Some(death) = died.get(&a.server) {
                assert!(
                    a.start <= *death,
                    "{job} started on {} at {}, after it died at {death}",
                    a.server,
                    a.start
                );
                assert!(
                    a.last_write <= *death,
                    "{job}: the attempt on {} wrote at {} after the server died at {death}",
                    a.server,
                    a.last_write
                );
            }
        }
        if list.len() > 1 {
            resumed_elsewhere += 1;
            assert!(
                list[..list.len() - 1]
                    .iter()
                    .all(|a| a.end.as_ref().is_some_and(|e| e.0 == "job.crashed")),
                "{job}: only a crash ends an attempt early here: {list:?}"
            );
        }
    }
    (attempts.len(), resumed_elsewhere, completions)
}

/// Three servers share 10,000 jobs (short commands, checkpointing commands, pipelines
/// that checkpoint, and a workflow whose last job waits for eighteen), submitted in
/// batches spread over the three; two are killed with SIGKILL, one after the other,
/// while they run jobs. The survivor takes the lead, finds them gone, kills their
/// leftover processes and recovers their jobs, which resume from their checkpoints:
/// every job completes exactly once; by the fencing records (each claim takes the
/// job's next fencing token and says which server took it) no attempt of a job ran
/// while another did, none started on a server after it died, and no write landed
/// outside the attempt holding the token; and a client streaming events from the
/// survivor saw every event, in order, with no gap and no duplicate.
#[test]
fn jobs_of_killed_servers_resume_elsewhere_once_and_a_survivors_stream_misses_nothing() {
    let begun = Instant::now();
    let (store, db) = database("kill");
    let schema = schema("kill");
    let q = |sql: &str| psql(&db, &format!("SET search_path TO {schema}; {sql}"));
    let config = "heartbeat = \"1s\"\n[queues]\ndefault = 32\n";
    let a = start_on(TempDir::new().unwrap(), &store, Some(config));
    let b = start_on(TempDir::new().unwrap(), &store, Some(config));
    let c = start_on(TempDir::new().unwrap(), &store, Some(config));
    let server_id = |url: &str| q(&format!("SELECT id FROM servers WHERE url = '{url}'"));
    let (a_id, b_id) = (server_id(&a.url), server_id(&b.url));
    let (mut curl, seen) = follow_events(&c.url);
    std::thread::sleep(Duration::from_millis(300));

    // Each checkpointing job counts to 8, a checkpoint a step, and on a resume
    // starts from its checkpoint; its result says where it started.
    let counting = r#"i=$(printf %s "$BATON_CHECKPOINT" | tr -dc 0-9); i=${i:-0}; from=$i; while [ $i -lt 8 ]; do i=$((i+1)); echo "::checkpoint {\"i\": $i}"; sleep 0.1; done; echo "::result {\"from\": $from}""#;
    // The workflow: a root, eighteen jobs after it, and one after all of those.
    const WORKFLOW: usize = 20;
    const TOTAL: usize = 10_000;
    // The other jobs, in the order they are claimed: mostly short commands, every
    // 33rd a checkpointing one, every 400th (from the 200th) a pipeline whose first
    // step checkpoints as it counts; the long ones spread over the whole run, so
    // that the killed servers run some when they die.
    let (mut counting_jobs, mut pipelines) = (0, 0);
    let jobs: Vec<serde_json::Value> = (0..TOTAL - WORKFLOW)
        .map(|n| {
            if n % 33 == 0 {
                counting_jobs += 1;
                serde_json::json!({"id": format!("k-{n}"), "kind": "command", "command": ["sh", "-c", counting], "max_recoveries": 5})
            } else if n % 400 == 200 {
                pipelines += 1;
                serde_json::json!({"id": format!("p-{n}"), "kind": "pipeline", "max_recoveries": 5,
                    "steps": [{"name": "count", "command": ["sh", "-c", counting]},
                              {"name": "after", "command": ["true"]}]})
            } else {
                serde_json::json!({"id": format!("t-{n}"), "kind": "command", "command": ["true"], "max_recoveries": 5})
            }
        })
        .collect();
    assert!(counting_jobs >= 300 && pipelines >= 20);
    let mut nodes = serde_json::Map::new();
    nodes.insert("root".into(), serde_json::json!({"kind": "command", "command": ["sh", "-c", "sleep 0.2"], "max_recoveries": 5}));
    for i in 0..18 {
        nodes.insert(format!("mid-{i}"), serde_json::json!({"kind": "command", "command": ["sh", "-c", counting], "depends_on": ["root"], "max_recoveries": 5}));
    }
    let mids: Vec<String> = (0..18).map(|i| format!("mid-{i}")).collect();
    nodes.insert("end".into(), serde_json::json!({"kind": "command", "command": ["true"], "depends_on": mids, "max_recoveries": 5}));
    assert_eq!(nodes.len(), WORKFLOW);

    // Batches of 500, the n-th to server n % 3, each server's batches sent one after
    // the other and the three servers' at once; the workflow through C after its
    // second batch.
    let servers = [&a, &b, &c];
    let batches: Vec<&[serde_json::Value]> = jobs.chunks(500).collect();
    std::thread::scope(|scope| {
        for (i, server) in servers.iter().enumerate() {
            let (batches, nodes) = (&batches, &nodes);
            scope.spawn(move || {
                for (n, part) in batches.iter().enumerate().skip(i).step_by(3) {
                    let answer = post(
                        &server.url,
                        "/api/jobs/batch",
                        &serde_json::json!({ "jobs": part }),
                    );
                    assert_eq!(answer["jobs"].as_array().map(Vec::len), Some(part.len()));
                    if n == 5 {
                        post(
                            &server.url,
                            "/api/workflows",
                            &serde_json::json!({"id": "wf", "jobs": nodes}),
                        );
                    }
                }
            });
        }
    });
    let submitted = begun.elapsed();
    let done = || {
        q("SELECT COUNT(*) FROM jobs WHERE state = 'completed'")
            .parse::<usize>()
            .unwrap()
    };
    // A victim dies once a share of the jobs is done and it runs checkpointing jobs
    // that have made a checkpoint.
    let runs_checkpointed = |id: &str| {
        q(&format!(
            "SELECT COUNT(*) FROM jobs WHERE server_id = '{id}' AND state = 'running' \
             AND checkpoint IS NOT NULL"
        )) != "0"
    };
    let kill = |mut s: support::Server| {
        s.child.kill().expect("SIGKILL");
        s.child.wait().expect("it ends");
        now_ms()
    };
    wait_up_to(
        Duration::from_secs(120),
        "a first share of jobs to complete",
        || done() >= TOTAL / 5 && runs_checkpointed(&b_id),
    );
    let b_died = kill(b);
    let first_kill = begun.elapsed();
    wait_up_to(Duration::from_secs(120), "more jobs to complete", || {
        done() >= TOTAL / 2 && runs_checkpointed(&a_id)
    });
    let a_died = kill(a);
    let second_kill = begun.elapsed();
    wait_up_to(Duration::from_secs(300), "every job to complete", || {
        done() >= TOTAL
    });
    let all_done = begun.elapsed();

    // The fencing records. Each claim takes the job's next fencing token
    // (`jobs.fence`) and writes one `job.started` naming the server that took it;
    // every write of that attempt (checkpoint, log, progress, outcome) is checked
    // against the token under the job's row lock. So the job's k-th start holds token
    // k, its events in order tell each attempt's span, and an audit finds: as many
    // starts as tokens given; each attempt ended (an outcome, or `job.crashed` when
    // its server died) before the next one started, by the order of the job's
    // events and by the clock (a crashed attempt's server was dead before the next
    // attempt started); no fenced write between an attempt's end and the next
    // start; no attempt on a killed server started, or wrote, after it died; and one
    // completion a job, by the attempt holding its last token.
    let log = q(
        "SELECT j.id || ' ' || j.fence || ' ' || e.type || ' ' || e.at || ' ' || \
         COALESCE(e.data->>'server_id', '-') \
         FROM events e JOIN jobs j ON j.key = e.job_key ORDER BY e.job_key, e.job_seq",
    );
    let died = std::collections::HashMap::from([(b_id.clone(), b_died), (a_id.clone(), a_died)]);
    let (jobs_audited, resumed_elsewhere, completions) = audit_fencing(&log, &died);
    assert_eq!(jobs_audited, TOTAL, "every job has its records");
    assert!(
        resumed_elsewhere > 0,
        "jobs of the killed servers ran again"
    );
    assert_eq!(completions.len(), TOTAL);
    assert!(
        completions.values().all(|n| *n == 1),
        "each job completed once"
    );
    assert_eq!(
        q("SELECT COUNT(DISTINCT data->>'server_id') FROM events WHERE type = 'job.crashed'"),
        "2",
        "each killed server had jobs under way when it died"
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
        pipelines.to_string()
    );
    let crashed: u64 = q("SELECT COUNT(DISTINCT job_id) FROM events WHERE type = 'job.crashed'")
        .parse()
        .unwrap();
    assert!(crashed > 0, "the killed servers were running jobs");
    let resumed: u64 = q("SELECT COUNT(*) FROM jobs WHERE (result->>'from')::int > 0")
        .parse()
        .unwrap();
    assert!(resumed > 0, "a recovered job resumed from its checkpoint");
    // Every attempt of a command started from the job's last checkpoint (the claim
    // names it), and every checkpointing command began its last attempt where its
    // last checkpoint before it said.
    assert_eq!(
        q(
            "SELECT COUNT(*) FROM events s JOIN jobs j ON j.key = s.job_key \
           WHERE j.kind = 'command' AND s.type = 'job.started' \
           AND COALESCE((s.data->'checkpoint'->>'seq')::bigint, 0) <> COALESCE(( \
             SELECT MAX(c.job_seq) FROM events c WHERE c.job_key = s.job_key \
             AND c.type = 'job.checkpoint' AND c.job_seq < s.job_seq), 0)"
        ),
        "0",
        "an attempt started from another point than the last checkpoint"
    );
    assert_eq!(
        q(
            "SELECT COUNT(*) FROM jobs j WHERE j.kind = 'command' AND j.result ? 'from' \
           AND (j.result->>'from')::int <> COALESCE(( \
             SELECT (c.data->'checkpoint'->>'i')::int FROM events c \
             WHERE c.job_key = j.key AND c.type = 'job.checkpoint' AND c.job_seq < ( \
               SELECT MAX(job_seq) FROM events WHERE job_key = j.key AND type = 'job.started') \
             ORDER BY c.job_seq DESC LIMIT 1), 0)"
        ),
        "0",
        "a resumed command began elsewhere than at its last checkpoint"
    );
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
    eprintln!(
        "{TOTAL} jobs ({counting_jobs} checkpointing, {pipelines} pipelines, a workflow of \
         {WORKFLOW}): submitted in {submitted:?}, first kill at {first_kill:?}, second at \
         {second_kill:?}, all done at {all_done:?}; {crashed} crashed, {resumed} resumed \
         from a checkpoint; the stream carried {} events",
        ids.len()
    );
    drop(c);
}

/// The state letter of a process (`R`, `S`, `T` stopped, `Z` zombie), or `None` once
/// it is gone.
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The median and the largest of `ms`.
fn p50_max(ms: &[f64]) -> (f64, f64) {
    let mut sorted = ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    (sorted[sorted.len() / 2], sorted[sorted.len() - 1])
}

/// Pausing, resuming, stopping and cancelling, through server A's API, jobs that
/// server B runs (their queue is served by B alone) reaches B's runner within 100 ms:
/// measured from the moment the call to A began to the moment the job's process was
/// stopped (SIGSTOP), running again (SIGCONT) or gone, and, for a stop or cancel, to
/// the moment A's event stream showed the job ended, as B's runner recorded it. A
/// answers each call at once: it has no attempt of the job to wait for.
#[test]
fn controls_through_one_server_reach_the_server_that_runs_the_job_within_100_ms() {
    use std::collections::{HashMap, HashSet};
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};
    let begun = Instant::now();
    let (store, db) = database("ctl");
    let schema = schema("ctl");
    let q = |sql: &str| psql(&db, &format!("SET search_path TO {schema}; {sql}"));
    let a = start_on(TempDir::new().unwrap(), &store, None);
    let b = start_on(
        TempDir::new().unwrap(),
        &store,
        Some("[queues]\nslow = 12\n"),
    );
    let b_id = q(&format!("SELECT id FROM servers WHERE url = '{}'", b.url));

    // A's event stream: which jobs it showed started, and when each job's end
    // reached it.
    let mut curl = Command::new("curl")
        .args(["-sN", &format!("{}/api/events", a.url)])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl runs");
    let ended: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let started: Arc<Mutex<HashSet<String>>> = Default::default();
    let out = curl.stdout.take().expect("stdout");
    let (seen, seen_started) = (ended.clone(), started.clone());
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let Ok(e) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
                continue;
            };
            let Some(job) = e["job_id"].as_str() else {
                continue;
            };
            if e["type"] == "job.cancelled" {
                seen.lock().unwrap().insert(job.to_owned(), Instant::now());
            } else if e["type"] == "job.started" {
                seen_started.lock().unwrap().insert(job.to_owned());
            }
        }
    });

    // Twelve long jobs in the queue that only B serves, submitted through B (A does
    // not know the queue), each running with its process.
    let jobs: Vec<String> = (0..12).map(|n| format!("long-{n}")).collect();
    for id in &jobs {
        post(
            &b.url,
            "/api/jobs",
            &serde_json::json!({"id": id, "kind": "command", "command": ["sleep", "600"], "queue": "slow"}),
        );
    }
    wait_for("the jobs to run on B with their processes", || {
        q(&format!(
            "SELECT COUNT(*) FROM jobs WHERE state = 'running' AND pgid IS NOT NULL \
             AND server_id = '{b_id}'"
        )) == jobs.len().to_string()
    });
    wait_for("A's stream to show the jobs started", || {
        started.lock().unwrap().len() == jobs.len()
    });
    let setup = begun.elapsed();
    // For each call to A, a thread watches the job's process from just before the
    // call until the change shows there: the figures run from the moment the call
    // began (A's own write included). The time A took to answer is shown beside them.
    let names = [
        "pause (process stopped)",
        "resume (process running again)",
        "stop (process gone)",
        "stop (job.cancelled on A's stream)",
        "cancel (process gone)",
        "cancel (job.cancelled on A's stream)",
    ];
    let mut figures: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut answers: HashMap<&str, Vec<f64>> = HashMap::new();
    let ms = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1000.0;
    let limit = Duration::from_secs(10);
    for (n, id) in jobs.iter().enumerate() {
        let pid: i32 = q(&format!("SELECT pgid FROM jobs WHERE id = '{id}'"))
            .parse()
            .unwrap();
        assert!(
            matches!(process_state(pid), Some('S' | 'R')),
            "{id}'s process runs"
        );
        let mut act = |action: &'static str, shows: fn(Option<char>) -> bool| {
            let began = Instant::now();
            let watcher = std::thread::spawn(move || {
                while !shows(process_state(pid)) {
                    if began.elapsed() > limit {
                        return None;
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
                Some(Instant::now())
            });
            post(
                &a.url,
                &format!("/api/jobs/{id}/{action}"),
                &serde_json::json!({}),
            );
            answers
                .entry(action)
                .or_default()
                .push(ms(began, Instant::now()));
            let seen = watcher.join().unwrap().unwrap_or_else(|| {
                panic!("{action} of {id} through A did not show on its process within {limit:?}")
            });
            (began, ms(began, seen))
        };
        figures[0].push(act("pause", |s| s == Some('T')).1);
        figures[1].push(act("resume", |s| matches!(s, Some('S' | 'R'))).1);
        let (which, action) = if n % 2 == 0 {
            (2, "stop")
        } else {
            (4, "cancel")
        };
        let (began, gone) = act(action, |s| !matches!(s, Some('S' | 'R' | 'T')));
        figures[which].push(gone);
        wait_for("the end on A's stream", || {
            ended.lock().unwrap().contains_key(id)
        });
        figures[which + 1].push(ms(began, ended.lock().unwrap()[id]));
    }
    let _ = curl.kill();
    let _ = curl.wait();

    // Each action took effect on B, in the order given, and was recorded once.
    for id in &jobs {
        assert_eq!(
            q(&format!(
                "SELECT string_agg(type, ' ' ORDER BY job_seq) FROM events WHERE job_id = '{id}' \
                 AND type IN ('job.paused', 'job.resumed', 'job.stopping', 'job.cancelled')"
            )),
            "job.paused job.resumed job.stopping job.cancelled",
            "{id}"
        );
        assert_eq!(
            q(&format!(
                "SELECT state || ' ' || server_id FROM jobs WHERE id = '{id}'"
            )),
            format!("cancelled {b_id}"),
            "{id} ran on B and ended cancelled"
        );
    }
    for (action, ms) in &answers {
        let (p50, max) = p50_max(ms);
        eprintln!("A answered {action} in p50 {p50:.1} ms, max {max:.1} ms");
        // A does not wait for an attempt of its own to show up: it has none.
        assert!(
            p50 < 100.0,
            "A took {p50:.1} ms in the median to answer {action}: {ms:?}"
        );
    }
    let mut worst: f64 = 0.0;
    for (name, ms) in names.iter().zip(&figures) {
        let (p50, max) = p50_max(ms);
        eprintln!(
            "{name}, over {} jobs: p50 {p50:.1} ms, max {max:.1} ms from the call to A",
            ms.len()
        );
        assert!(
            p50 < 100.0,
            "{name}: a control through A took {p50:.1} ms in the median to reach B: {ms:?}"
        );
        worst = worst.max(max);
    }
    assert!(
        worst < 1000.0,
        "a control through A took {worst:.1} ms to reach B"
    );
    eprintln!(
        "(servers up and jobs running after {setup:?}, all done after {:?})",
        begun.elapsed()
    );
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
