//! `baton schedule ...`: schedules listed, shown, added (from flags or a JSON or TOML
//! file), removed, paused, resumed, fired by hand, and their history.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use baton_api::{
    Misfire, Overlap, Schedule, ScheduleDeleted, ScheduleHistory, ScheduleList, ScheduleSpec,
    Trigger, Triggered,
};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::{self, Client, exit};
use crate::encode;

#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// List schedules with their next and last runs.
    Ls {
        /// Only enabled ones.
        #[arg(long, conflicts_with = "paused")]
        enabled: bool,
        /// Only paused ones.
        #[arg(long)]
        paused: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One schedule and its latest fires.
    Show { id: String },
    /// Add a schedule (or replace one with --replace), from flags or a file:
    /// `baton schedule add nightly --daily 02:00 --tz Europe/London -- ./backup.sh`.
    Add(Box<AddArgs>),
    /// Delete a schedule and its history; the jobs it submitted stay.
    Rm { id: String },
    /// Pause: it fires only by hand until resumed.
    Pause { id: String },
    /// Resume: it fires again from its next time (missed runs are not made up).
    Resume { id: String },
    /// Fire it now, whatever its trigger; prints the job's id.
    Trigger {
        id: String,
        /// Wait for the job, with a progress bar, and exit with its outcome.
        #[arg(long)]
        wait: bool,
    },
    /// Its fires, newest first, each with its job's outcome.
    History {
        id: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
    },
}

#[derive(Args)]
pub struct AddArgs {
    /// The schedule's id (generated when absent; a file may give it).
    id: Option<String>,
    /// A JSON or TOML file with the whole schedule (`-`: JSON from stdin); the flags
    /// below are then not used.
    #[arg(long, short)]
    file: Option<PathBuf>,
    /// Replace a schedule with this id instead of refusing it.
    #[arg(long)]
    replace: bool,

    /// A cron expression: 5 fields, or 6 with seconds first (`"0 2 * * *"`).
    #[arg(long, group = "when")]
    cron: Option<String>,
    /// Every day at HH:MM.
    #[arg(long, group = "when", value_name = "HH:MM")]
    daily: Option<String>,
    /// On these days (`mon,fri`) at --at HH:MM.
    #[arg(long, group = "when", value_name = "DAYS", requires = "at")]
    weekly: Option<String>,
    /// The time of day for --weekly.
    #[arg(long, value_name = "HH:MM")]
    at: Option<String>,
    /// Every interval (`30s`, `10m`, `6h`, `1d`).
    #[arg(long, group = "when")]
    every: Option<String>,
    /// With --every: the first fire (RFC 3339), the anchor of the rest.
    #[arg(long, requires = "every")]
    start_at: Option<String>,
    /// Once, at an RFC 3339 time.
    #[arg(long, group = "when")]
    once: Option<String>,
    /// Only when triggered by hand.
    #[arg(long, group = "when")]
    manual: bool,
    /// The IANA time zone of --cron, --daily and --weekly [default: UTC].
    #[arg(long)]
    tz: Option<String>,
    /// After downtime: skip, run_once or run_all.
    #[arg(long, value_parser = parse_misfire)]
    misfire: Option<Misfire>,
    /// With --misfire run_all: the most missed runs made up.
    #[arg(long)]
    misfire_limit: Option<u32>,
    /// While its previous job is active: allow, skip or queue.
    #[arg(long, value_parser = parse_overlap)]
    overlap: Option<Overlap>,
    /// Add it paused.
    #[arg(long)]
    paused: bool,

    /// The job: a handler kind.
    #[arg(long)]
    kind: Option<String>,
    /// The job: a stored pipeline.
    #[arg(long)]
    pipeline: Option<String>,
    /// Run the command through `sh -c`.
    #[arg(long)]
    shell: bool,
    /// JSON payload for a handler.
    #[arg(long)]
    payload: Option<String>,
    #[arg(long)]
    queue: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    priority: Option<i32>,
    /// Retries after a failure (max_attempts - 1).
    #[arg(long)]
    retries: Option<u32>,
    /// A label of each job, key=value; may repeat.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// The job: a command to run.
    #[arg(last = true)]
    command: Vec<String>,
}

fn parse_misfire(s: &str) -> Result<Misfire, String> {
    serde_json::from_value(Value::String(s.into()))
        .map_err(|_| format!("invalid misfire {s:?}: expected skip, run_once or run_all"))
}

fn parse_overlap(s: &str) -> Result<Overlap, String> {
    serde_json::from_value(Value::String(s.into()))
        .map_err(|_| format!("invalid overlap {s:?}: expected allow, skip or queue"))
}

pub fn run(c: &Client, command: ScheduleCommand) -> Result<u8> {
    let path = |id: &str, action: &str| format!("/api/schedules/{}{action}", encode(id));
    match command {
        ScheduleCommand::Ls {
            enabled,
            paused,
            limit,
            cursor,
        } => {
            let mut query = vec![format!("limit={limit}")];
            if enabled || paused {
                query.push(format!("enabled={enabled}"));
            }
            if let Some(cursor) = cursor {
                query.push(format!("cursor={}", encode(&cursor)));
            }
            let list: ScheduleList =
                c.call("GET", &format!("/api/schedules?{}", query.join("&")), None)?;
            if c.json {
                c.print_json(&list);
            } else {
                print_schedules(&list);
            }
        }
        ScheduleCommand::Show { id } => {
            let s: Schedule = c.call("GET", &path(&id, ""), None)?;
            if c.json {
                c.print_json(&s);
            } else {
                print_schedule(&s);
                let history: ScheduleHistory =
                    c.call("GET", &path(&id, "/history?limit=5"), None)?;
                if !history.fires.is_empty() {
                    println!();
                    print_history(&history);
                }
            }
        }
        ScheduleCommand::Add(args) => {
            let replace = args.replace;
            let spec = spec_of(*args)?;
            let s: Schedule = match (&spec["id"], replace) {
                (Value::String(id), true) => c.call("PUT", &path(id, ""), Some(&spec))?,
                (_, true) => bail!("--replace needs the schedule's id"),
                _ => c.call("POST", "/api/schedules", Some(&spec))?,
            };
            if c.json {
                c.print_json(&s);
            } else {
                println!("{}", s.id);
                println!("  next run {}", time(s.next_run));
            }
        }
        ScheduleCommand::Rm { id } => {
            let out: ScheduleDeleted = c.call("DELETE", &path(&id, ""), None)?;
            if c.json {
                c.print_json(&out);
            } else {
                println!("deleted schedule {}", out.id);
            }
        }
        ScheduleCommand::Pause { id } => report(c, c.call("POST", &path(&id, "/pause"), None)?),
        ScheduleCommand::Resume { id } => report(c, c.call("POST", &path(&id, "/resume"), None)?),
        ScheduleCommand::Trigger { id, wait } => {
            let out: Triggered = c.call("POST", &path(&id, "/trigger"), None)?;
            let Some(job) = &out.job else {
                if c.json {
                    c.print_json(&out);
                } else {
                    println!("{}", out.fire.message.as_deref().unwrap_or("skipped"));
                }
                return Ok(exit::OK);
            };
            if wait {
                if !c.json {
                    eprintln!("fired {id}: job {}", job.id);
                }
                return client::wait(c, &job.id, None, false);
            }
            if c.json {
                c.print_json(&out);
            } else {
                println!("{}", job.id);
            }
        }
        ScheduleCommand::History { id, limit, cursor } => {
            let mut uri = path(&id, &format!("/history?limit={limit}"));
            if let Some(cursor) = cursor {
                uri.push_str(&format!("&cursor={}", encode(&cursor)));
            }
            let history: ScheduleHistory = c.call("GET", &uri, None)?;
            if c.json {
                c.print_json(&history);
            } else {
                print_history(&history);
            }
        }
    }
    Ok(exit::OK)
}

fn report(c: &Client, s: Schedule) {
    if c.json {
        c.print_json(&s);
    } else {
        let state = if s.enabled { "enabled" } else { "paused" };
        println!("{} {state}; next run {}", s.id, time(s.next_run));
    }
}

/// The schedule to send: a file as it is, or one built from the flags.
fn spec_of(args: AddArgs) -> Result<Value> {
    if let Some(file) = &args.file {
        let mut spec = read_file(file)?;
        if let Some(id) = &args.id {
            spec["id"] = Value::String(id.clone());
        }
        return Ok(spec);
    }
    let trigger = if let Some(expr) = args.cron {
        Trigger::Cron { expr }
    } else if let Some(at) = args.daily {
        let (hour, minute) = clock(&at, "--daily")?;
        Trigger::Daily { hour, minute }
    } else if let Some(days) = args.weekly {
        let (hour, minute) = clock(args.at.as_deref().unwrap_or_default(), "--at")?;
        Trigger::Weekly {
            days: days.split(',').map(|d| d.trim().to_owned()).collect(),
            hour,
            minute,
        }
    } else if let Some(every) = args.every {
        Trigger::Interval {
            every,
            start_at: args.start_at,
        }
    } else if let Some(at) = args.once {
        Trigger::Once { at }
    } else if args.manual {
        Trigger::Manual
    } else {
        bail!("say when: --cron, --daily, --weekly with --at, --every, --once or --manual");
    };
    let job = client::submit_spec(
        args.kind,
        args.command,
        args.shell,
        args.pipeline,
        args.payload,
        args.queue,
        args.priority,
        None,
        args.retries,
        None,
        args.labels,
    )?;
    let spec = ScheduleSpec {
        id: args.id,
        job,
        timezone: args.tz,
        trigger,
        enabled: args.paused.then_some(false),
        misfire: args.misfire,
        misfire_limit: args.misfire_limit,
        overlap: args.overlap,
    };
    Ok(serde_json::to_value(spec)?)
}

/// `HH:MM` as hour and minute; the server checks the ranges.
fn clock(s: &str, flag: &str) -> Result<(u32, u32)> {
    let parse = || -> Option<(u32, u32)> {
        let (h, m) = s.split_once(':')?;
        Some((h.parse().ok()?, m.parse().ok()?))
    };
    parse().ok_or_else(|| anyhow!("invalid {flag} {s:?}: expected a time of day like 02:30"))
}

fn read_file(file: &PathBuf) -> Result<Value> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        return serde_json::from_str(&text).map_err(|e| anyhow!("invalid schedule on stdin: {e}"));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow!("cannot read {}: {e}", file.display()))?;
    if file.extension().is_some_and(|e| e == "toml") {
        let t: toml::Value = toml::from_str(&text)
            .map_err(|e| anyhow!("invalid {}: {}", file.display(), e.to_string().trim()))?;
        Ok(serde_json::to_value(t)?)
    } else {
        serde_json::from_str(&text).map_err(|e| anyhow!("invalid {}: {e}", file.display()))
    }
}

fn time(t: Option<i64>) -> String {
    t.map(baton_core::time::to_rfc3339)
        .unwrap_or_else(|| "-".into())
}

fn describe(t: &Trigger) -> String {
    match t {
        Trigger::Once { at } => format!("once {at}"),
        Trigger::Interval { every, start_at } => match start_at {
            Some(s) => format!("every {every} from {s}"),
            None => format!("every {every}"),
        },
        Trigger::Daily { hour, minute } => format!("daily {hour:02}:{minute:02}"),
        Trigger::Weekly { days, hour, minute } => {
            format!("{} {hour:02}:{minute:02}", days.join(","))
        }
        Trigger::Cron { expr } => format!("cron {expr}"),
        Trigger::Manual => "manual".into(),
    }
}

fn print_schedules(list: &ScheduleList) {
    println!(
        "{:<24} {:<24} {:<16} {:<7} {:<24} {:<24} {:>5}",
        "ID", "TRIGGER", "ZONE", "STATE", "NEXT RUN", "LAST RUN", "RUNS"
    );
    for s in &list.schedules {
        println!(
            "{:<24} {:<24} {:<16} {:<7} {:<24} {:<24} {:>5}",
            s.id,
            describe(&s.trigger),
            s.timezone,
            if s.enabled { "enabled" } else { "paused" },
            time(s.next_run),
            time(s.last_run),
            s.run_count
        );
    }
    let more = list
        .next_cursor
        .as_deref()
        .map(|c| format!("; more with --cursor {c}"))
        .unwrap_or_default();
    println!("{} of {} schedules{more}", list.schedules.len(), list.total);
}

fn print_schedule(s: &Schedule) {
    let row = |k: &str, v: String| println!("{k:<12} {v}");
    row("id", s.id.clone());
    row("trigger", describe(&s.trigger));
    row("time zone", s.timezone.clone());
    row(
        "state",
        if s.enabled { "enabled" } else { "paused" }.to_owned(),
    );
    row("next run", time(s.next_run));
    row("last run", time(s.last_run));
    row("runs", s.run_count.to_string());
    row(
        "misfire",
        match s.misfire {
            Misfire::RunAll => format!("run_all (up to {})", s.misfire_limit),
            m => m.as_str().to_owned(),
        },
    );
    row("overlap", s.overlap.as_str().to_owned());
    row("job", serde_json::to_string(&s.job).unwrap_or_default());
    row("created", baton_core::time::to_rfc3339(s.created_at));
}

fn print_history(h: &ScheduleHistory) {
    println!(
        "{:>5} {:<24} {:<24} {:<9} {:<8} {:<38} OUTCOME",
        "FIRE", "SCHEDULED FOR", "FIRED AT", "REASON", "ACTION", "JOB"
    );
    for f in &h.fires {
        let outcome = match (&f.outcome, &f.error, &f.message) {
            (Some(state), Some(e), _) => format!("{state} ({}: {})", e.code, e.message),
            (Some(state), None, _) => state.to_string(),
            (None, _, Some(m)) => m.clone(),
            (None, _, None) => "-".into(),
        };
        println!(
            "{:>5} {:<24} {:<24} {:<9} {:<8} {:<38} {outcome}",
            f.seq,
            baton_core::time::to_rfc3339(f.scheduled_for),
            baton_core::time::to_rfc3339(f.fired_at),
            f.reason.as_str(),
            f.action.as_str(),
            f.job_id.as_deref().unwrap_or("-"),
        );
    }
    if let Some(c) = &h.next_cursor {
        println!("older fires with --cursor {c}");
    }
}
