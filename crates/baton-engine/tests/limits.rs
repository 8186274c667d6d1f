//! Resource usage and limits of command and pipeline jobs, with real processes: the
//! usage sampler's measurements in the job, its events and its attempts; a job that
//! allocates past its memory limit or spins past its CPU-time limit fails with the
//! limit's error; a well-behaved job is untouched. Each limit is tested on both
//! mechanisms: the cgroups this machine offers (it must offer some: the test fails,
//! saying why, when it does not) and rlimits with the sampler (forced by option).
//!
//! The programs are `sh` and `perl` (`perl-base` is part of every Debian system).

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_engine::{
    Engine, Event, EventKind, Job, JobSpec, LimitsMechanism, ResourceLimits, State, StepSpec,
    UsageOptions,
};
use baton_store::{SqliteOptions, SqliteStore, Store};
use tempfile::TempDir;

async fn engine(dir: &TempDir, mechanism: LimitsMechanism) -> Engine {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(SqliteOptions::new(dir.path().join("baton.db"))).unwrap());
    let built = Engine::builder()
        .store(store)
        .queue("default", 8)
        .usage(UsageOptions {
            sample_every: Duration::from_millis(100),
            event_every: Duration::from_millis(300),
            mechanism,
        })
        .build()
        .await;
    match built {
        Ok(engine) => engine,
        // No skip: a machine without usable cgroups fails this test and says why.
        Err(e) => panic!("cannot start an engine with limits mechanism {mechanism:?}: {e}"),
    }
}

/// The cgroup engine, and the version it found (printed: the tests' output says which
/// version they exercised).
async fn cgroup_engine(dir: &TempDir) -> Engine {
    let engine = engine(dir, LimitsMechanism::Cgroup).await;
    let report = engine.limits_report();
    assert!(report.mechanism.starts_with("cgroup v"), "{report:?}");
    assert!(report.cpus_enforced);
    println!(
        "limits enforced with {} in {}",
        report.mechanism,
        report.cgroups.as_deref().unwrap_or("?")
    );
    engine
}

async fn finished(engine: &Engine, id: &str) -> Job {
    tokio::time::timeout(Duration::from_secs(30), engine.wait(id))
        .await
        .unwrap_or_else(|_| panic!("job {id} did not finish within 30 s"))
        .unwrap()
}

fn limits(memory: Option<&str>, cpu_time: Option<&str>, cpus: Option<f64>) -> ResourceLimits {
    ResourceLimits {
        memory: memory.map(str::to_owned),
        cpu_time: cpu_time.map(str::to_owned),
        cpus,
    }
}

/// Holds about `mb` MB of written memory for `secs` seconds.
fn hold_memory(mb: u32, secs: u32) -> JobSpec {
    JobSpec::command([
        "perl".to_owned(),
        "-e".to_owned(),
        format!("my $x = 'a' x ({mb} * 1000 * 1000); sleep {secs}; print length($x), qq(\\n)"),
    ])
}

fn spin() -> JobSpec {
    JobSpec::shell_command("while :; do :; done")
}

fn of_kind(events: &[Event], kind: EventKind) -> Vec<&Event> {
    events.iter().filter(|e| e.kind == kind).collect()
}

async fn memory_hog_fails(mechanism: LimitsMechanism) {
    let dir = TempDir::new().unwrap();
    let engine = match mechanism {
        LimitsMechanism::Cgroup => cgroup_engine(&dir).await,
        m => engine(&dir, m).await,
    };
    let job = engine
        .submit(hold_memory(200, 30).limits(limits(Some("50MB"), None, None)))
        .await
        .unwrap();
    let t0 = Instant::now();
    let done = finished(&engine, &job.job.id).await;
    assert_eq!(done.state, State::Failed, "{:?}", done.error);
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "killed long before its sleep ended"
    );
    let error = done.error.expect("an error");
    println!("{mechanism:?}: {}: {}", error.code, error.message);
    assert_eq!(error.code, "memory_limit", "{error:?}");
    // The value reached and the limit, in that order: "NNN MB used, limit 50 MB".
    let used: f64 = error
        .message
        .split(" MB used, limit 50 MB")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no value reached in {:?}", error.message));
    assert!(used >= 50.0, "{}", error.message);
    assert_eq!(done.attempt, 1, "a limit is not retried");
    let attempts = engine.attempts(&job.job.id).await.unwrap();
    assert_eq!(attempts[0].signal.as_deref(), Some("SIGKILL"));
    assert_eq!(engine.usage_stats().memory_kills, 1);
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn spinner_fails(mechanism: LimitsMechanism) {
    let dir = TempDir::new().unwrap();
    let engine = match mechanism {
        LimitsMechanism::Cgroup => cgroup_engine(&dir).await,
        m => engine(&dir, m).await,
    };
    let job = engine
        .submit(
            spin()
                .limits(limits(None, Some("1s"), None))
                .max_attempts(3),
        )
        .await
        .unwrap();
    let done = finished(&engine, &job.job.id).await;
    assert_eq!(done.state, State::Failed, "{:?}", done.error);
    let error = done.error.expect("an error");
    println!("{mechanism:?}: {}: {}", error.code, error.message);
    assert_eq!(error.code, "cpu_limit", "{error:?}");
    assert!(
        error.message.contains(" s of CPU time used, limit 1s"),
        "{}",
        error.message
    );
    assert_eq!(done.attempt, 1, "a limit is not retried");
    let usage = done.usage.expect("the job's usage");
    assert!(usage.cpu_ms >= 1000, "{usage:?}");
    assert!(
        usage.cpu_ms < 4000,
        "killed soon after the limit: {usage:?}"
    );
    assert_eq!(engine.usage_stats().cpu_kills, 1);
    engine.shutdown(Duration::from_secs(5)).await;
}

/// A job within its limits completes as it would without them, and its usage is
/// measured: in the job, in `job.usage` events while it runs, and in its attempt.
async fn well_behaved_runs(mechanism: LimitsMechanism) {
    let dir = TempDir::new().unwrap();
    let engine = match mechanism {
        LimitsMechanism::Cgroup => cgroup_engine(&dir).await,
        m => engine(&dir, m).await,
    };
    let job = engine
        .submit(hold_memory(30, 2).limits(limits(Some("200MB"), Some("20s"), Some(1.0))))
        .await
        .unwrap();
    let id = job.job.id.clone();
    // While it runs, the engine shows the sampler's latest measurement.
    let live = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let j = engine.get(&id).await.unwrap();
            if let Some(u) = j.usage.filter(|u| u.rss_bytes > 25_000_000) {
                return u;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the running job's usage shows its memory");
    assert_eq!(live.attempt, 1);
    let done = finished(&engine, &id).await;
    assert_eq!(done.state, State::Completed, "{:?}", done.error);
    assert_eq!(done.result, Some(serde_json::Value::Null));
    let logs = engine.logs(&id, 0, 10).await.unwrap();
    assert!(
        logs.iter()
            .any(|l| l.stream == "stdout" && l.line == "30000000"),
        "the program ran to its end: {logs:?}"
    );
    let usage = done.usage.expect("the finished job keeps its usage");
    assert!(usage.peak_rss_bytes >= 30_000_000, "{usage:?}");
    assert!(usage.peak_rss_bytes < 200_000_000, "{usage:?}");
    let events = engine.events(&id, 0).await.unwrap();
    let usage_events = of_kind(&events, EventKind::Usage);
    assert!(!usage_events.is_empty(), "job.usage while it ran");
    // At most one every 300 ms (the configured spacing), with some slack.
    let span = usage_events.last().unwrap().at - usage_events[0].at;
    assert!(
        (usage_events.len() as i64 - 1) * 250 <= span,
        "{} events in {span} ms",
        usage_events.len()
    );
    let completed = of_kind(&events, EventKind::Completed);
    assert_eq!(completed[0].data["usage"], serde_json::json!(usage));
    let attempts = engine.attempts(&id).await.unwrap();
    assert_eq!(attempts[0].usage.as_ref(), Some(&usage));
    assert_eq!(
        engine.usage_stats().memory_kills + engine.usage_stats().cpu_kills,
        0
    );
    assert_eq!(
        done.runs.limits,
        Some(limits(Some("200MB"), Some("20s"), Some(1.0)))
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn cgroup_a_job_past_its_memory_limit_fails_with_a_memory_limit_error() {
    memory_hog_fails(LimitsMechanism::Cgroup).await;
}

#[tokio::test]
async fn rlimit_a_job_past_its_memory_limit_fails_with_a_memory_limit_error() {
    memory_hog_fails(LimitsMechanism::Rlimit).await;
}

#[tokio::test]
async fn cgroup_a_job_past_its_cpu_time_limit_fails_with_a_cpu_limit_error() {
    spinner_fails(LimitsMechanism::Cgroup).await;
}

#[tokio::test]
async fn rlimit_a_job_past_its_cpu_time_limit_fails_with_a_cpu_limit_error() {
    spinner_fails(LimitsMechanism::Rlimit).await;
}

#[tokio::test]
async fn cgroup_a_job_within_its_limits_is_untouched_and_measured() {
    well_behaved_runs(LimitsMechanism::Cgroup).await;
}

#[tokio::test]
async fn rlimit_a_job_within_its_limits_is_untouched_and_measured() {
    well_behaved_runs(LimitsMechanism::Rlimit).await;
}

/// `cpus` is a quota on the cgroup: a spinner held to 0.2 CPUs for two seconds uses
/// about 0.4 s of CPU time. Without cgroups it cannot be held, and the job's log says
/// so.
#[tokio::test]
async fn cpus_is_a_cgroup_quota_and_said_to_be_unenforced_without_one() {
    let dir = TempDir::new().unwrap();
    let cgroups = cgroup_engine(&dir).await;
    let job = cgroups
        .submit(
            spin()
                .limits(limits(None, None, Some(0.2)))
                .timeout(Duration::from_secs(2))
                .max_attempts(1),
        )
        .await
        .unwrap();
    let done = finished(&cgroups, &job.job.id).await;
    assert_eq!(
        done.error.as_ref().map(|e| e.code.as_str()),
        Some("timeout")
    );
    let cpu = done.usage.expect("usage").cpu_ms;
    assert!((100..1200).contains(&cpu), "2 s at 0.2 CPUs used {cpu} ms");
    cgroups.shutdown(Duration::from_secs(5)).await;

    let dir = TempDir::new().unwrap();
    let rlimit = engine(&dir, LimitsMechanism::Rlimit).await;
    let engine = rlimit;
    let report = engine.limits_report();
    assert_eq!(
        (report.mechanism.as_str(), report.cpus_enforced),
        ("rlimit", false)
    );
    let job = engine
        .submit(JobSpec::command(["true"]).limits(limits(None, None, Some(0.5))))
        .await
        .unwrap();
    let done = finished(&engine, &job.job.id).await;
    assert_eq!(done.state, State::Completed);
    let logs = engine.logs(&job.job.id, 0, 10).await.unwrap();
    assert!(
        logs.iter()
            .any(|l| l.stream == "baton" && l.line.contains("limits.cpus 0.5 is not enforced")),
        "{logs:?}"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

/// A pipeline's limits hold for the whole job: a step past the memory limit fails
/// the job, its error naming the step; the steps before it ran.
#[tokio::test]
async fn a_pipeline_step_past_the_jobs_memory_limit_fails_the_job() {
    let dir = TempDir::new().unwrap();
    let engine = engine(&dir, LimitsMechanism::Rlimit).await;
    let hog = hold_memory(150, 30).command.unwrap();
    let hog: Vec<&str> = hog.iter().map(String::as_str).collect();
    let job = engine
        .submit(
            JobSpec::pipeline_steps(vec![
                StepSpec::new("small", &["true"]),
                StepSpec::new("big", &hog),
            ])
            .limits(limits(Some("40MB"), None, None)),
        )
        .await
        .unwrap();
    let done = finished(&engine, &job.job.id).await;
    let error = done.error.expect("an error");
    assert_eq!(error.code, "memory_limit");
    assert!(
        error.message.starts_with("step \"big\": "),
        "{}",
        error.message
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

/// Jobs without limits take no cgroup and no spawn hook, and are still measured.
#[tokio::test]
async fn a_job_without_limits_is_measured_too() {
    let dir = TempDir::new().unwrap();
    let engine = cgroup_engine(&dir).await;
    let job = engine.submit(hold_memory(20, 1)).await.unwrap();
    let done = finished(&engine, &job.job.id).await;
    assert_eq!(done.state, State::Completed, "{:?}", done.error);
    let usage = done.usage.expect("usage without limits");
    assert!(usage.peak_rss_bytes >= 20_000_000, "{usage:?}");
    assert_eq!(done.runs.limits, None);
    let stats = engine.usage_stats();
    assert!(stats.ticks > 0 && stats.sampler_cpu_ns > 0, "{stats:?}");
    engine.shutdown(Duration::from_secs(5)).await;
}

/// A server that died leaves its jobs' cgroups behind, perhaps with processes in them:
/// the next server to start kills those processes and removes the folders.
#[tokio::test]
async fn cgroups_of_a_server_that_is_gone_are_emptied_and_removed_at_start() {
    let dir = TempDir::new().unwrap();
    let first = cgroup_engine(&dir).await;
    let report = first.limits_report();
    first.shutdown(Duration::from_secs(5)).await;
    // The first hierarchy's folder of this process; its parent holds every server's.
    let own = report.cgroups.expect("cgroup folders");
    let own = std::path::PathBuf::from(own.split(", ").next().unwrap());
    let base = own.parent().unwrap().to_path_buf();
    // No process has pid 4194304 or more (the kernel's largest pid is below it).
    let stale = base.join("baton.4194399.1");
    let job = stale.join("job.1");
    std::fs::create_dir_all(&job).unwrap();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    std::fs::write(job.join("cgroup.procs"), sleeper.id().to_string()).unwrap();

    let dir2 = TempDir::new().unwrap();
    let second = cgroup_engine(&dir2).await;
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = sleeper.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = sleeper.kill();
            panic!("the stale group's process was not killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "the stale group's process was killed"
    );
    assert!(!stale.exists(), "{} was removed", stale.display());
    assert!(own.exists(), "this process's own folder stays");
    second.shutdown(Duration::from_secs(5)).await;
}
