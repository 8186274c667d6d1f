//! Command and pipeline jobs: an OS process per job (or per pipeline step), in its own
//! process group, under live control by signals, talking back through stdout
//! directives (DESIGN.md section 3). Every other line of stdout and stderr is a log line.
//!
//! The process is spawned on the `posix_spawn` path (a process group but no
//! `pre_exec`), so spawning does not slow down as the engine's memory grows. One task
//! supervises the process, reads its pipes and applies its directives; aborting that
//! task (a force stop, a shutdown past its timeout) drops a guard that kills the group.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton_core::StepSpec;
use baton_store::{JobProcess, ProcessRecord, Store, Update};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::context::{Exit, JobContext, JobError};
use crate::limits::LimitHit;
use crate::policy::CommandPolicy;
use crate::procfs::proc_stat;
use crate::run::Ctl;
use crate::security::Refusal;
use crate::spawn_hook::SpawnHook;
use crate::usage::Tracked;

/// A longer line is cut into pieces of this size, so that a process that never prints
/// a newline cannot make the engine buffer without bound.
const MAX_LINE: usize = 64 * 1024;
/// Lines of stderr quoted in a failed job's error.
const STDERR_TAIL: usize = 10;
const TAIL_LINE_MAX: usize = 400;
/// The most log lines written in one store write.
const LOG_BATCH: usize = 1024;
/// Pipes are 64 KiB in the kernel; reading as much at once batches a chatty process's
/// lines into few writes.
const PIPE_BUFFER: usize = 64 * 1024;
/// How long to keep reading the pipes after the process group is dead: only a process
/// that left the group (`setsid`) can still hold them open.
const DRAIN: Duration = Duration::from_secs(2);

/// A job spec's `exec`, as validated by `baton_core::JobSpec::validate`.
#[derive(Debug, Default, Deserialize)]
struct Exec {
    command: Option<Vec<String>>,
    shell: Option<bool>,
    env: Option<BTreeMap<String, String>>,
    cwd: Option<String>,
    steps: Option<Vec<StepSpec>>,
    limits: Option<baton_core::ResourceLimits>,
}

/// A pipeline's checkpoint: the steps done, their results, and the running step's own
/// checkpoint (`::checkpoint` from its process).
#[derive(Debug, Default, Serialize, Deserialize)]
struct PipelineCheckpoint {
    #[serde(default)]
    completed_steps: Vec<String>,
    #[serde(default)]
    step: Option<String>,
    #[serde(default)]
    results: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
}

/// The built-in handler of kind `command`.
pub(crate) async fn run_command(ctx: JobContext, _payload: Value) -> Result<Value, JobError> {
    let (exec, secrets) = exec_of(&ctx)?;
    let argv = exec
        .command
        .filter(|c| !c.is_empty())
        .ok_or_else(|| JobError::fatal_with_code("invalid_spec", "the job has no command"))?;
    // The job's own variables first: Baton's come last, so a spec cannot fake them.
    let mut env: Vec<(String, String)> = exec.env.unwrap_or_default().into_iter().collect();
    env.extend(base_env(&ctx));
    let parents = ParentResults::write(&ctx).await?;
    env.extend(parents.env());
    if let Some(checkpoint) = ctx.last_checkpoint() {
        env.push(("BATON_CHECKPOINT".into(), checkpoint.to_string()));
        if let Some(step) = ctx.resume_step() {
            env.push(("BATON_RESUME_STEP".into(), step.to_owned()));
        }
    }
    let tracked = track(&ctx, exec.limits.as_ref()).await?;
    let spec = ProcSpec {
        argv: program(argv, exec.shell.unwrap_or(false)),
        env,
        cwd: exec.cwd,
        timeout: ctx.timeout(),
        grace: ctx.grace(),
        secrets,
    };
    let run = run_process(&ctx, &spec, Scope::Command, &tracked).await?;
    run.outcome("")
}

/// The built-in handler of kind `pipeline`: each step a process, a checkpoint after
/// each; a retried or recovered job skips the steps its checkpoint lists as completed.
pub(crate) async fn run_pipeline(ctx: JobContext, _payload: Value) -> Result<Value, JobError> {
    let (exec, secrets) = exec_of(&ctx)?;
    let steps = exec
        .steps
        .filter(|s| !s.is_empty())
        .ok_or_else(|| JobError::fatal_with_code("invalid_spec", "the pipeline has no steps"))?;
    let resumed: Option<PipelineCheckpoint> = ctx
        .last_checkpoint()
        .and_then(|c| serde_json::from_value(c.clone()).ok());
    let resuming = resumed.is_some();
    let mut state = resumed.unwrap_or_default();
    // The interrupted step's own checkpoint goes back to that step only.
    let mut step_checkpoint = match (&state.step, state.data.take()) {
        (Some(step), Some(data)) if !state.completed_steps.contains(step) => {
            Some((step.clone(), data))
        }
        _ => None,
    };
    let count = steps.len();
    // Time spent paused between steps does not count against the job's timeout.
    let mut budget = ctx.timeout();
    let mut first_run = true;
    let parents = ParentResults::write(&ctx).await?;
    // One measurement and one set of limits for the whole job, across its steps.
    let tracked = track(&ctx, exec.limits.as_ref()).await?;
    for (index, step) in steps.iter().enumerate() {
        if state.completed_steps.contains(&step.name) {
            continue;
        }
        // Pausing between steps holds the next one here; stopping ends the job here.
        ctx.pause_point().await?;
        ctx.set_step(&step.name);
        ctx.record_update(Update::Step(step.name.clone())).await?;
        ctx.record_update(Update::Progress {
            fraction: Some(index as f64 / count as f64),
            message: Some(format!("step {} of {count}: {}", index + 1, step.name)),
        })
        .await?;
        let step_timeout = step
            .timeout
            .as_deref()
            .and_then(|t| baton_core::duration::parse(t).ok());
        let tries = 1 + step.retries.unwrap_or(0);
        let mut try_no = 1;
        let result = loop {
            let mut env: Vec<(String, String)> =
                exec.env.clone().unwrap_or_default().into_iter().collect();
            env.extend(step.env.clone().unwrap_or_default());
            env.extend(base_env(&ctx));
            env.extend(parents.env());
            env.push(("BATON_STEP".into(), step.name.clone()));
            if resuming && first_run {
                env.push(("BATON_RESUME_STEP".into(), step.name.clone()));
            }
            if let Some((name, data)) = &step_checkpoint
                && *name == step.name
            {
                env.push(("BATON_CHECKPOINT".into(), data.to_string()));
            }
            let (timeout, job_limited) = match (step_timeout, budget) {
                (Some(s), Some(b)) if b < s => (Some(b), true),
                (Some(s), _) => (Some(s), false),
                (None, b) => (b, b.is_some()),
            };
            let spec = ProcSpec {
                argv: program(step.command.clone(), step.shell.unwrap_or(false)),
                env,
                cwd: step.cwd.clone().or_else(|| exec.cwd.clone()),
                timeout,
                grace: ctx.grace(),
                secrets: secrets.clone(),
            };
            first_run = false;
            let scope = Scope::Step {
                index,
                count,
                name: &step.name,
                done: &state,
            };
            let what = format!("step {:?}: ", step.name);
            let run = run_process(&ctx, &spec, scope, &tracked)
                .await
                .map_err(|e| e.prefixed(&what))?;
            budget = budget.map(|b| b.saturating_sub(run.active));
            let timed_out_job = job_limited && run.timed_out.is_some();
            match run.outcome(&what) {
                Ok(v) => break v,
                Err(e) if ctx.is_stopping() || timed_out_job => return Err(e),
                Err(e) if !e.is_retryable() || try_no >= tries => return Err(e),
                Err(e) => {
                    let note = format!(
                        "step {:?} failed ({}); running it again ({} of {} retries)",
                        step.name,
                        e.message(),
                        try_no,
                        tries - 1
                    );
                    tracing::info!(job_id = %ctx.job_id(), step = %step.name, try_no, "retrying a failed pipeline step");
                    let _ = ctx.append_logs(vec![("baton".into(), note)]).await;
                    try_no += 1;
                    ctx.pause_point().await?;
                }
            }
        };
        if step_checkpoint
            .as_ref()
            .is_some_and(|(n, _)| *n == step.name)
        {
            step_checkpoint = None;
        }
        state.completed_steps.push(step.name.clone());
        state.results.insert(step.name.clone(), result);
        state.step = Some(step.name.clone());
        let data = serde_json::to_value(&state).unwrap_or(Value::Null);
        ctx.record_update(Update::Checkpoint {
            data,
            step: Some(step.name.clone()),
        })
        .await?;
    }
    Ok(json!({ "steps": state.results }))
}

/// At start, before recovery: kills the process group of every job that was executing
/// when the engine stopped. Returns, by job id, what was done (for the recovery events).
///
/// A recorded group is killed when its leader still runs with the recorded start time,
/// or when the leader is gone: a pid cannot be reused while a process group of that id
/// still has members, so members of a leaderless group are the job's. A leader with
/// another start time is a reused pid, and is left alone.
pub(crate) async fn kill_stranded(
    store: &dyn Store,
    this_host: &str,
    servers: Option<&[String]>,
) -> crate::Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for ProcessRecord {
        job_id,
        process,
        host,
        server_id,
    } in store.processes().await?
    {
        // On a shared store, only the processes of the servers that are gone.
        if let Some(gone) = servers
            && !server_id.as_ref().is_some_and(|id| gone.contains(id))
        {
            continue;
        }
        let pgid = process.pgid;
        let note = if let Some(other) = host.as_deref().filter(|h| *h != this_host) {
            // A process group id names a process only on its own machine: here it
            // could be anyone's.
            Some(format!(
                "process group {pgid} ran on host {other}, not this one; it was left alone"
            ))
        } else if pgid <= 1 {
            Some("invalid process group id; nothing was killed".to_string())
        } else {
            match proc_stat(pgid as u32) {
                Some(stat) if stat.start_time != process.start_time => Some(format!(
                    "pid {pgid} now belongs to another process; it was left alone"
                )),
                _ => match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
                    Ok(()) => None,
                    Err(Errno::ESRCH) => Some(format!("process group {pgid} had already exited")),
                    Err(e) => Some(format!("cannot kill process group {pgid}: {e}")),
                },
            }
        };
        match &note {
            None => {
                tracing::warn!(job_id = %job_id, pgid, "killed the process group a crashed engine left running")
            }
            Some(n) => tracing::info!(job_id = %job_id, pgid, note = %n, "no process to clean up"),
        }
        let killed: Vec<i32> = if note.is_none() { vec![pgid] } else { vec![] };
        let mut data = json!({ "killed_pgids": killed });
        if let Some(n) = note {
            data["cleanup"] = json!(n);
        }
        out.insert(job_id, data);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// One process.

struct ProcSpec {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    timeout: Option<Duration>,
    grace: Duration,
    /// Values masked in what the process prints (longest first).
    secrets: Vec<String>,
}

/// How a process's directives map onto the job.
#[derive(Clone, Copy)]
enum Scope<'a> {
    Command,
    Step {
        index: usize,
        count: usize,
        name: &'a str,
        done: &'a PipelineCheckpoint,
    },
}

impl Scope<'_> {
    /// A step's progress is its share of the whole pipeline's.
    fn progress(&self, fraction: f64) -> f64 {
        match self {
            Scope::Command => fraction,
            Scope::Step { index, count, .. } => (*index as f64 + fraction) / *count as f64,
        }
    }

    /// A step's checkpoint is stored inside the pipeline's, which remembers the steps
    /// already done.
    fn checkpoint(&self, ctx: &JobContext, data: Value) -> Update {
        match self {
            Scope::Command => Update::Checkpoint {
                data,
                step: ctx.current_step(),
            },
            Scope::Step { name, done, .. } => Update::Checkpoint {
                data: json!({
                    "completed_steps": done.completed_steps,
                    "step": name,
                    "results": done.results,
                    "data": data,
                }),
                step: Some(name.to_string()),
            },
        }
    }
}

/// How a process ended.
struct Finished {
    status: ExitStatus,
    /// Set when the job passed one of its resource limits.
    limit_hit: Option<LimitHit>,
    /// Set when the timeout stopped it.
    timed_out: Option<Duration>,
    /// Time it ran, not counting time paused.
    active: Duration,
    result: Option<Value>,
    stderr_tail: VecDeque<String>,
}

impl Finished {
    fn outcome(self, what: &str) -> Result<Value, JobError> {
        let tail = if self.stderr_tail.is_empty() {
            String::new()
        } else {
            let lines: Vec<&str> = self.stderr_tail.iter().map(String::as_str).collect();
            format!("; last lines of stderr:\n{}", lines.join("\n"))
        };
        if let Some(hit) = self.limit_hit {
            return Err(hit.error(what));
        }
        let exit = match (self.status.code(), self.status.signal()) {
            (Some(code), _) => Some(Exit::Code(code)),
            (None, Some(n)) => Some(Exit::Signal(signal_name(n))),
            (None, None) => None,
        };
        if let Some(limit) = self.timed_out {
            return Err(JobError::with_code(
                "timeout",
                format!(
                    "{what}timed out after {} and was stopped{}",
                    baton_core::duration::format(limit),
                    signal_suffix(self.status)
                ),
            )
            .with_exit(exit));
        }
        if self.status.success() {
            return Ok(self.result.unwrap_or(Value::Null));
        }
        if let Some(code) = self.status.code() {
            return Err(JobError::with_code(
                "exit_code",
                format!("{what}exited with code {code}{tail}"),
            )
            .with_exit(exit));
        }
        let signal = self.status.signal().map_or("?".into(), signal_name);
        Err(
            JobError::with_code("signal", format!("{what}killed by {signal}{tail}"))
                .with_exit(exit),
        )
    }
}

fn signal_suffix(status: ExitStatus) -> String {
    match status.signal() {
        Some(s) => format!(" (killed by {})", signal_name(s)),
        None => String::new(),
    }
}

fn signal_name(n: i32) -> String {
    Signal::try_from(n).map_or_else(|_| format!("signal {n}"), |s| s.as_str().to_owned())
}

/// Kills the process group when dropped: when the process ended, to end what it left
/// behind, and when the supervising task is aborted (force stop), to end the job.
struct GroupGuard {
    pgid: i32,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // The leader is reaped by now, so its pid could in principle be reused; Linux
        // hands out pids in a cycle, and a reuse within this instant would need the
        // whole pid space to wrap.
        signal_group(self.pgid, Signal::SIGKILL);
    }
}

fn signal_group(pgid: i32, signal: Signal) {
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pgid, signal = %signal, error = %e, "cannot signal a job's process group")
        }
    }
}

async fn run_process(
    ctx: &JobContext,
    spec: &ProcSpec,
    scope: Scope<'_>,
    tracked: &Tracked,
) -> Result<Finished, JobError> {
    let mut child = spawn(spec, &ctx.security().commands, tracked.spawn_hook())?;
    let pid = child.id().unwrap_or(0);
    let guard = GroupGuard { pgid: pid as i32 };
    tracked.started(guard.pgid);
    let start_time = proc_stat(pid).map_or(0, |s| s.start_time);
    tracing::debug!(job_id = %ctx.job_id(), pid, program = %spec.argv[0], "started a job process");
    let recorded = ctx
        .set_process(Some(JobProcess {
            pgid: guard.pgid,
            start_time,
        }))
        .await;
    if let Err(e) = recorded {
        // The attempt no longer holds the job (a force stop won the race): the guard
        // kills the process.
        return Err(JobError::with_code(
            "cancelled",
            format!("cannot record the job's process: {e}"),
        ));
    }
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let shared = Shared {
        secrets: &spec.secrets,
        logs_full: AtomicBool::new(false),
        result: Mutex::new(None),
        tail: Mutex::new(VecDeque::new()),
    };
    let readers = async {
        tokio::join!(
            async {
                if let Some(out) = stdout {
                    read_stdout(ctx, &shared, scope, out).await;
                }
            },
            async {
                if let Some(err) = stderr {
                    read_stderr(ctx, &shared, err).await;
                }
            }
        )
    };
    tokio::pin!(readers);
    let supervise = supervise(ctx, &mut child, guard.pgid, spec.timeout, spec.grace);
    tokio::pin!(supervise);
    let mut read_all = false;
    let (status, timed_out, active) = loop {
        tokio::select! {
            s = &mut supervise => break s,
            _ = &mut readers, if !read_all => read_all = true,
        }
    };
    let signal = status.as_ref().ok().and_then(|s| s.signal());
    let limit_hit = tracked.process_ended(signal);
    // The leader has exited: end whatever it left in its group, so the pipes close.
    drop(guard);
    if !read_all && tokio::time::timeout(DRAIN, &mut readers).await.is_err() {
        tracing::warn!(job_id = %ctx.job_id(), "a process outside the job's group holds its output open; not waiting for it");
    }
    let status = status.map_err(|e| JobError::new(format!("cannot wait for the process: {e}")))?;
    Ok(Finished {
        status,
        limit_hit,
        timed_out,
        active,
        result: shared.result.lock().ok().and_then(|mut r| r.take()),
        stderr_tail: shared
            .tail
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default(),
    })
}

fn spawn(
    spec: &ProcSpec,
    policy: &CommandPolicy,
    hook: Option<SpawnHook>,
) -> Result<Child, JobError> {
    let program = &spec.argv[0];
    // Under a restrictive policy the file checked is the file run: the resolved path,
    // with the name as written kept as argv[0] (a multi-call program reads it).
    let checked = policy
        .check(program, &spec.env, spec.cwd.as_deref())
        .map_err(|r| JobError::fatal_with_code("command_not_allowed", r.message))?;
    let mut cmd = match &checked {
        Some(path) => {
            let mut cmd = Command::new(path);
            cmd.arg0(program);
            cmd
        }
        None => Command::new(program),
    };
    cmd.args(&spec.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that signals reach its children too. Set through
        // posix_spawn attributes: no pre_exec, so the fast spawn path stays (for a
        // job without limits).
        .process_group(0)
        .kill_on_drop(false);
    let limited = hook.is_some();
    if let Some(hook) = hook {
        hook.install(&mut cmd);
    }
    // A resumed run sets these; a fresh one must not inherit the engine's.
    for key in [
        "BATON_CHECKPOINT",
        "BATON_RESUME_STEP",
        "BATON_STEP",
        "BATON_PARENT_RESULTS",
    ] {
        cmd.env_remove(key);
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &spec.cwd {
        // posix_spawn reports a missing folder as ENOENT, like a missing program: look
        // first, so that the error names the right one.
        match std::fs::metadata(cwd) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(JobError::fatal_with_code(
                    "spawn_failed",
                    format!("working directory {cwd:?} is not a folder"),
                ));
            }
            Err(e) => {
                return Err(JobError::fatal_with_code(
                    "spawn_failed",
                    format!("working directory {cwd:?} does not exist ({e})"),
                ));
            }
        }
        cmd.current_dir(cwd);
    }
    cmd.spawn().map_err(|e| {
        let why = match e.raw_os_error().map(Errno::from_raw) {
            Some(Errno::ENOENT) if program.contains('/') => "no such file".to_string(),
            Some(Errno::ENOENT) => "program not found in PATH".to_string(),
            Some(Errno::EACCES | Errno::EPERM) => {
                "permission denied (is it an executable file?)".to_string()
            }
            Some(Errno::ENOEXEC) => {
                "not an executable format (a script needs a #! line)".to_string()
            }
            _ => e.to_string(),
        };
        // With limits, the child first enters its cgroup or sets its rlimit: an error
        // there fails the spawn too.
        let also = if limited {
            " (or it could not be placed under its limits)"
        } else {
            ""
        };
        JobError::fatal_with_code(
            "spawn_failed",
            format!("cannot run {program:?}: {why}{also}"),
        )
    })
}

/// Starts measuring the attempt's processes under the job's limits. A `cpus` limit
/// this server cannot hold (no cgroups) is said in the job's log.
async fn track(
    ctx: &JobContext,
    limits: Option<&baton_core::ResourceLimits>,
) -> Result<Tracked, JobError> {
    let parsed = match limits {
        Some(l) => l
            .parse("limits")
            .map_err(|e| JobError::fatal_with_code("invalid_spec", e.to_string()))?,
        None => baton_core::JobLimits::default(),
    };
    let tracked = ctx.track(parsed).map_err(|e| {
        JobError::with_code(
            "spawn_failed",
            format!("cannot make the job's cgroup for its limits: {e}"),
        )
    })?;
    if tracked.cpus_unenforced()
        && let Some(cpus) = tracked.limits().cpus
    {
        let note = format!(
            "limits.cpus {cpus} is not enforced: this server has no cgroups for jobs (see GET /api/resources)"
        );
        let _ = ctx.append_logs(vec![("baton".into(), note)]).await;
    }
    Ok(tracked)
}

/// Turns control intents into signals, enforces the timeout, and waits for the leader
/// to exit. Returns its status, the timeout if it fired, and the time spent unpaused.
async fn supervise(
    ctx: &JobContext,
    child: &mut Child,
    pgid: i32,
    timeout: Option<Duration>,
    grace: Duration,
) -> (std::io::Result<ExitStatus>, Option<Duration>, Duration) {
    let mut ctl = ctx.control();
    let started = Instant::now();
    let mut paused_since: Option<Instant> = None;
    let mut paused_total = Duration::ZERO;
    let mut stopping = false;
    let mut kill_at: Option<Instant> = None;
    let mut timed_out = None;
    let mut ctl_open = true;
    let mut intent = Some(*ctl.borrow_and_update());
    loop {
        if let Some(now) = intent.take() {
            match now {
                Ctl::Pause if paused_since.is_none() && !stopping => {
                    signal_group(pgid, Signal::SIGSTOP);
                    paused_since = Some(Instant::now());
                    tracing::debug!(job_id = %ctx.job_id(), pgid, "paused the job's process group");
                }
                Ctl::Run => {
                    if let Some(since) = paused_since.take() {
                        signal_group(pgid, Signal::SIGCONT);
                        paused_total += since.elapsed();
                    }
                }
                Ctl::Stop => {
                    stop(pgid, grace, &mut stopping, &mut kill_at, &mut paused_since);
                }
                _ => {}
            }
        }
        let deadline = match (timeout, paused_since, stopping) {
            (Some(t), None, false) => Some(started + paused_total + t),
            _ => None,
        };
        tokio::select! {
            status = child.wait() => {
                let active = started.elapsed().saturating_sub(paused_total);
                return (status, timed_out, active);
            }
            changed = ctl.changed(), if ctl_open => match changed {
                Ok(()) => intent = Some(*ctl.borrow_and_update()),
                Err(_) => ctl_open = false,
            },
            _ = sleep_until(deadline), if deadline.is_some() => {
                tracing::info!(job_id = %ctx.job_id(), pgid, "the job's timeout passed; stopping its process");
                timed_out = timeout;
                stop(pgid, grace, &mut stopping, &mut kill_at, &mut paused_since);
            }
            _ = sleep_until(kill_at), if kill_at.is_some() => {
                tracing::info!(job_id = %ctx.job_id(), pgid, "grace period over; killing the job's process group");
                signal_group(pgid, Signal::SIGKILL);
                kill_at = None;
            }
        }
    }
}

/// A graceful stop: SIGTERM (and SIGCONT, so that a paused process can act on it),
/// then SIGKILL once the grace period is over.
fn stop(
    pgid: i32,
    grace: Duration,
    stopping: &mut bool,
    kill_at: &mut Option<Instant>,
    paused_since: &mut Option<Instant>,
) {
    if *stopping {
        return;
    }
    *stopping = true;
    *paused_since = None;
    if grace.is_zero() {
        signal_group(pgid, Signal::SIGKILL);
        return;
    }
    signal_group(pgid, Signal::SIGTERM);
    signal_group(pgid, Signal::SIGCONT);
    *kill_at = Some(Instant::now() + grace);
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------
// The pipes.

/// What the readers leave for the outcome.
struct Shared<'a> {
    secrets: &'a [String],
    logs_full: AtomicBool,
    result: Mutex<Option<Value>>,
    tail: Mutex<VecDeque<String>>,
}

async fn read_stdout(
    ctx: &JobContext,
    shared: &Shared<'_>,
    scope: Scope<'_>,
    out: tokio::process::ChildStdout,
) {
    let mut reader = BufReader::with_capacity(PIPE_BUFFER, out);
    let mut line = Vec::new();
    let mut batch: Vec<(String, String)> = Vec::new();
    loop {
        match next_line(&mut reader, &mut line).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                tracing::warn!(job_id = %ctx.job_id(), error = %e, "cannot read the job's stdout");
                break;
            }
        }
        // Masked before anything reads it: a directive's text ends up in the job and
        // its events as surely as a log line does.
        let text = crate::secrets::mask(&String::from_utf8_lossy(&line), shared.secrets);
        match parse_directive(&text) {
            None => batch.push(("stdout".into(), text)),
            Some(Err(why)) => {
                tracing::warn!(job_id = %ctx.job_id(), line = %text, why = %why, "malformed directive");
                batch.push(("stdout".into(), text));
                batch.push((
                    "baton".into(),
                    format!("warning: malformed directive: {why}"),
                ));
            }
            Some(Ok(d)) => {
                // Log lines printed before the directive are stored before it.
                write_logs(ctx, shared, &mut batch).await;
                apply(ctx, shared, scope, d).await;
            }
        }
        if batch.len() >= LOG_BATCH || !reader.buffer().contains(&b'\n') {
            write_logs(ctx, shared, &mut batch).await;
        }
    }
    write_logs(ctx, shared, &mut batch).await;
}

async fn read_stderr(ctx: &JobContext, shared: &Shared<'_>, err: tokio::process::ChildStderr) {
    let mut reader = BufReader::with_capacity(PIPE_BUFFER, err);
    let mut line = Vec::new();
    let mut batch: Vec<(String, String)> = Vec::new();
    loop {
        match next_line(&mut reader, &mut line).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                tracing::warn!(job_id = %ctx.job_id(), error = %e, "cannot read the job's stderr");
                break;
            }
        }
        let text = crate::secrets::mask(&String::from_utf8_lossy(&line), shared.secrets);
        if let Ok(mut tail) = shared.tail.lock() {
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(clip(&text, TAIL_LINE_MAX));
        }
        batch.push(("stderr".into(), text));
        if batch.len() >= LOG_BATCH || !reader.buffer().contains(&b'\n') {
            write_logs(ctx, shared, &mut batch).await;
        }
    }
    write_logs(ctx, shared, &mut batch).await;
}

/// Stores a batch of log lines (each also a `job.log` event), unless the job's log is
/// full already.
async fn write_logs(ctx: &JobContext, shared: &Shared<'_>, batch: &mut Vec<(String, String)>) {
    if batch.is_empty() {
        return;
    }
    let lines = std::mem::take(batch);
    if shared.logs_full.load(Ordering::Relaxed) {
        return;
    }
    match ctx.append_logs(lines).await {
        Ok(a) if a.full => shared.logs_full.store(true, Ordering::Relaxed),
        Ok(_) => {}
        Err(baton_store::Error::StaleFence { .. }) => {
            // The attempt was ended (force stop): nothing more is recorded.
            shared.logs_full.store(true, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(job_id = %ctx.job_id(), error = %e, "cannot store log lines"),
    }
}

/// Reads one line (without its newline) into `line`; a line longer than [`MAX_LINE`]
/// comes in pieces. False at the end of the stream.
async fn next_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<bool> {
    line.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(!line.is_empty());
        }
        let room = MAX_LINE - line.len();
        let window = &available[..available.len().min(room)];
        if let Some(i) = window.iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&window[..i]);
            reader.consume(i + 1);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(true);
        }
        let n = window.len();
        line.extend_from_slice(window);
        reader.consume(n);
        if line.len() >= MAX_LINE {
            return Ok(true);
        }
    }
}

#[derive(Debug, PartialEq)]
enum Directive {
    Progress(f64, Option<String>),
    Step(String),
    Checkpoint(Value),
    Output(String),
    Result(Value),
}

/// `None` for an ordinary log line; `Some(Err(why))` for a malformed directive.
fn parse_directive(line: &str) -> Option<Result<Directive, String>> {
    let rest = line.strip_prefix("::")?;
    let (name, arg) = match rest.split_once(' ') {
        Some((n, a)) => (n, a),
        None => (rest, ""),
    };
    let d = match name {
        "progress" => {
            let (value, message) = match arg.trim_start().split_once(' ') {
                Some((v, m)) => (v, Some(m.trim()).filter(|m| !m.is_empty())),
                None => (arg.trim(), None),
            };
            let fraction = match value.strip_suffix('%') {
                Some(p) => p.parse::<f64>().ok().map(|p| p / 100.0),
                None => value.parse::<f64>().ok(),
            };
            match fraction {
                Some(f) if (0.0..=1.0).contains(&f) => {
                    Ok(Directive::Progress(f, message.map(str::to_owned)))
                }
                _ => Err(format!(
                    "::progress expects a fraction from 0 to 1 or a percentage, got {value:?}"
                )),
            }
        }
        "step" => match arg.trim() {
            "" => Err("::step expects a step name".into()),
            s => Ok(Directive::Step(s.to_owned())),
        },
        "checkpoint" => serde_json::from_str(arg)
            .map(Directive::Checkpoint)
            .map_err(|e| format!("::checkpoint expects JSON: {e}")),
        "result" => serde_json::from_str(arg)
            .map(Directive::Result)
            .map_err(|e| format!("::result expects JSON: {e}")),
        // Streamed text keeps its spaces: only the one after the name is taken off.
        "output" => Ok(Directive::Output(arg.to_owned())),
        // Not one of ours: an ordinary line that happens to start with "::".
        _ => return None,
    };
    Some(d)
}

async fn apply(ctx: &JobContext, shared: &Shared<'_>, scope: Scope<'_>, d: Directive) {
    let update = match d {
        Directive::Progress(f, message) => Update::Progress {
            fraction: Some(scope.progress(f)),
            message,
        },
        Directive::Step(name) => {
            ctx.set_step(&name);
            Update::Step(name)
        }
        Directive::Output(text) => Update::Output(text),
        // Durable before the next line is read: this awaits the commit.
        Directive::Checkpoint(data) => scope.checkpoint(ctx, data),
        Directive::Result(v) => {
            if let Ok(mut r) = shared.result.lock() {
                *r = Some(v);
            }
            return;
        }
    };
    if let Err(e) = ctx.record_update(update).await {
        tracing::debug!(job_id = %ctx.job_id(), error = %e, "cannot record a directive");
    }
}

/// The job's `exec` with its secrets opened, checked against today's commands policy
/// (the job may have been stored under another), and the secret values to mask.
fn exec_of(ctx: &JobContext) -> Result<(Exec, Vec<String>), JobError> {
    let exec = ctx.exec().cloned().unwrap_or(Value::Null);
    let opened = ctx.security().open(&exec).map_err(|r| match r {
        Refusal::Policy(r) => JobError::fatal_with_code("command_not_allowed", r.message),
        Refusal::Spec(e) => JobError::fatal_with_code("invalid_spec", e.to_string()),
    })?;
    let parsed = serde_json::from_value(opened.exec).map_err(|e| {
        JobError::fatal_with_code("invalid_spec", format!("the job's command is invalid: {e}"))
    })?;
    Ok((parsed, opened.secrets))
}

/// The results of a job's dependencies in a JSON file for its processes, named by
/// `BATON_PARENT_RESULTS`: an object keyed by each dependency's local name in the
/// workflow (or its id), with its `job_id`, `state`, `result` and `error`. Readable by
/// the job's user only; removed when the attempt ends.
struct ParentResults {
    path: Option<std::path::PathBuf>,
}

impl ParentResults {
    async fn write(ctx: &JobContext) -> Result<Self, JobError> {
        let parents = ctx.parent_results().await?;
        if parents.is_empty() {
            return Ok(Self { path: None });
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "baton-parents-{}-{}-{}.json",
            std::process::id(),
            n,
            ctx.attempt()
        ));
        let text = serde_json::to_vec_pretty(&parents)
            .map_err(|e| JobError::new(format!("cannot encode the parent results: {e}")))?;
        let written = async {
            use tokio::io::AsyncWriteExt;
            let mut f = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .await?;
            f.write_all(&text).await?;
            f.flush().await
        };
        // The guard exists before the write, so that a failed write leaves no file.
        let guard = Self {
            path: Some(path.clone()),
        };
        written.await.map_err(|e| {
            JobError::new(format!(
                "cannot write the parent results to {}: {e}",
                path.display()
            ))
        })?;
        Ok(guard)
    }

    fn env(&self) -> Option<(String, String)> {
        let path = self.path.as_ref()?;
        Some(("BATON_PARENT_RESULTS".into(), path.display().to_string()))
    }
}

impl Drop for ParentResults {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn base_env(ctx: &JobContext) -> Vec<(String, String)> {
    vec![
        ("BATON_JOB_ID".into(), ctx.job_id().to_owned()),
        ("BATON_ATTEMPT".into(), ctx.attempt().to_string()),
        ("BATON_QUEUE".into(), ctx.queue().to_owned()),
    ]
}

/// `shell`: `sh -c command[0]`, the rest of `command` as `$1`, `$2`, ...
fn program(argv: Vec<String>, shell: bool) -> Vec<String> {
    if !shell {
        return argv;
    }
    let mut it = argv.into_iter();
    let script = it.next().unwrap_or_default();
    let mut out = vec!["sh".into(), "-c".into(), script, "sh".into()];
    out.extend(it);
    out
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, expected: Option<Result<Directive, &str>>) {
        let got = parse_directive(line);
        match (&got, &expected) {
            (Some(Err(why)), Some(Err(part))) => {
                assert!(why.contains(part), "{line:?}: {why:?} lacks {part:?}")
            }
            _ => assert_eq!(got, expected.map(|r| r.map_err(str::to_owned)), "{line:?}"),
        }
    }

    #[test]
    fn directives_parse() {
        use Directive::*;
        check("plain line", None);
        check("::unknown thing", None);
        check(
            "::progress 0.42 fetching page 3",
            Some(Ok(Progress(0.42, Some("fetching page 3".into())))),
        );
        check("::progress 42%", Some(Ok(Progress(0.42, None))));
        check("::progress 1", Some(Ok(Progress(1.0, None))));
        check("::progress 1.5", Some(Err("fraction from 0 to 1")));
        check("::progress abc", Some(Err("\"abc\"")));
        check("::progress", Some(Err("fraction")));
        check("::step products", Some(Ok(Step("products".into()))));
        check("::step", Some(Err("step name")));
        check(
            "::checkpoint {\"page\": 3}",
            Some(Ok(Checkpoint(json!({"page": 3})))),
        );
        check("::checkpoint {bad", Some(Err("expects JSON")));
        check(
            "::output  two spaces",
            Some(Ok(Output(" two spaces".into()))),
        );
        check("::output", Some(Ok(Output(String::new()))));
        check(
            "::result {\"rows\": 1200}",
            Some(Ok(Result(json!({"rows": 1200})))),
        );
        check("::result nope", Some(Err("expects JSON")));
    }

    #[test]
    fn shell_commands_pass_the_rest_as_arguments() {
        let argv = program(vec!["echo $1".into(), "hi".into()], true);
        assert_eq!(argv, ["sh", "-c", "echo $1", "sh", "hi"]);
        assert_eq!(program(vec!["ls".into()], false), ["ls"]);
    }

    #[tokio::test]
    async fn long_lines_come_in_pieces() {
        let data = format!("{}\nshort\r\nlast", "x".repeat(MAX_LINE + 10));
        let mut reader = BufReader::new(data.as_bytes());
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while next_line(&mut reader, &mut line).await.unwrap() {
            lines.push(line.len());
        }
        assert_eq!(lines, [MAX_LINE, 10, 5, 4]);
    }
}
