//! `baton workflow ...` and `baton queue ...`: workflows submitted from a JSON or TOML
//! file, read and controlled as a whole; queues listed, paused and resumed.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use baton_api::{QueueInfo, QueueList, WorkflowGraph, WorkflowList, WorkflowSubmitted};
use clap::Subcommand;
use serde_json::Value;

use crate::client::{self, Client, exit};
use crate::encode;

#[derive(Subcommand)]
pub enum WorkflowCommand {
    /// Submit a workflow from a JSON or TOML file (`-` reads JSON from stdin):
    /// `{"id": "optional", "jobs": {"a": {job spec}, "b": {..., "depends_on": ["a"]}}}`.
    Submit {
        file: PathBuf,
        /// Wait until every job of it has ended; exit 0 when it completed.
        #[arg(long)]
        wait: bool,
    },
    /// Workflows, newest first, with their jobs counted by state.
    Ls {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Where the previous page said the next one starts.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Its jobs with their states and dependencies.
    Show { id: String },
    /// Pause it: running jobs pause, nothing new starts.
    Pause { id: String },
    /// Resume it: jobs whose dependencies are met are queued, paused jobs resume.
    Resume { id: String },
    /// Run its failed and cancelled jobs again.
    Retry {
        id: String,
        #[arg(long)]
        from_checkpoint: bool,
    },
    /// Cancel it: waiting jobs at once, running ones stopped gracefully.
    Cancel { id: String },
}

#[derive(Subcommand)]
pub enum QueueCommand {
    /// Queues with their counts and whether they are paused.
    Ls,
    /// Start no new jobs from this queue (running ones go on); kept across restarts.
    Pause { name: String },
    /// Start jobs from this queue again.
    Resume { name: String },
}

pub fn workflow(c: &Client, command: WorkflowCommand) -> Result<u8> {
    let path = |id: &str, action: &str| format!("/api/workflows/{}/{action}", encode(id));
    match command {
        WorkflowCommand::Submit { file, wait } => {
            let spec = read_spec(&file)?;
            let out: WorkflowSubmitted = c.call("POST", "/api/workflows", Some(&spec))?;
            if c.json && !wait {
                c.print_json(&out);
            } else if !c.json {
                println!("{}", out.id);
                for (name, id) in &out.jobs {
                    println!("  {name:<24} {id}");
                }
            }
            if !wait {
                return Ok(exit::OK);
            }
            for id in out.jobs.values() {
                client::wait(c, id, None, true)?;
            }
            let graph: WorkflowGraph =
                c.call("GET", &format!("/api/workflows/{}", encode(&out.id)), None)?;
            show(c, &graph);
            Ok(match graph.state {
                baton_api::WorkflowState::Completed => exit::OK,
                baton_api::WorkflowState::Cancelled => exit::CANCELLED,
                _ => exit::FAILED,
            })
        }
        WorkflowCommand::Ls { limit, cursor } => {
            let mut query = format!("limit={limit}");
            if let Some(cursor) = cursor {
                query.push_str(&format!("&cursor={}", encode(&cursor)));
            }
            let list: WorkflowList = c.call("GET", &format!("/api/workflows?{query}"), None)?;
            if c.json {
                c.print_json(&list);
            } else {
                print_list(&list);
            }
            Ok(exit::OK)
        }
        WorkflowCommand::Show { id } => {
            let graph: WorkflowGraph =
                c.call("GET", &format!("/api/workflows/{}", encode(&id)), None)?;
            show(c, &graph);
            Ok(exit::OK)
        }
        WorkflowCommand::Pause { id } => control(c, &path(&id, "pause")),
        WorkflowCommand::Resume { id } => control(c, &path(&id, "resume")),
        WorkflowCommand::Cancel { id } => control(c, &path(&id, "cancel")),
        WorkflowCommand::Retry {
            id,
            from_checkpoint,
        } => {
            let query = if from_checkpoint {
                "retry?from_checkpoint=true"
            } else {
                "retry"
            };
            control(c, &path(&id, query))
        }
    }
}

pub fn queue(c: &Client, command: QueueCommand) -> Result<u8> {
    let set = |name: &str, action: &str| -> Result<u8> {
        let q: QueueInfo = c.call(
            "POST",
            &format!("/api/queues/{}/{action}", encode(name)),
            None,
        )?;
        if c.json {
            c.print_json(&q);
        } else {
            println!("{} {}", q.name, crate::client::queue_state(&q));
        }
        Ok(exit::OK)
    };
    match command {
        QueueCommand::Ls => {
            let list: QueueList = c.call("GET", "/api/queues", None)?;
            if c.json {
                c.print_json(&list);
            } else {
                client::print_queues(&list);
            }
            Ok(exit::OK)
        }
        QueueCommand::Pause { name } => set(&name, "pause"),
        QueueCommand::Resume { name } => set(&name, "resume"),
    }
}

fn control(c: &Client, path: &str) -> Result<u8> {
    let graph: WorkflowGraph = c.call("POST", path, None)?;
    if c.json {
        c.print_json(&graph);
    } else {
        println!("{} {}", graph.id, graph.state);
    }
    Ok(exit::OK)
}

fn print_list(list: &WorkflowList) {
    println!(
        "{:<38} {:<10} {:<24} {:>6}  COUNTS",
        "ID", "STATE", "CREATED", "JOBS"
    );
    for w in &list.workflows {
        let counts: Vec<String> = w.counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        println!(
            "{:<38} {:<10} {:<24} {:>6}  {}",
            w.id,
            w.state,
            baton_core::time::to_rfc3339(w.created_at),
            w.jobs,
            counts.join(", ")
        );
    }
    let more = list
        .next_cursor
        .as_deref()
        .map(|c| format!("; more with --cursor {c}"))
        .unwrap_or_default();
    println!("{} workflows{more}", list.workflows.len());
}

fn show(c: &Client, g: &WorkflowGraph) {
    if c.json {
        c.print_json(g);
        return;
    }
    let counts: Vec<String> = g.counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    println!("workflow {}: {} ({})", g.id, g.state, counts.join(", "));
    println!("{:<24} {:<38} {:<10} AFTER", "NAME", "ID", "STATE");
    for node in &g.nodes {
        let after: Vec<String> = g
            .edges
            .iter()
            .filter(|e| e.to == node.id)
            .map(|e| {
                let name = g
                    .nodes
                    .iter()
                    .find(|n| n.id == e.from)
                    .and_then(|n| n.name.clone())
                    .unwrap_or_else(|| e.from.clone());
                match e.on {
                    baton_api::Condition::Completed => name,
                    on => format!("{name} ({})", on.as_str()),
                }
            })
            .collect();
        println!(
            "{:<24} {:<38} {:<10} {}",
            node.name.as_deref().unwrap_or("-"),
            node.id,
            node.state,
            after.join(", ")
        );
    }
}

/// A workflow spec from a file: JSON, or TOML (`[jobs.fetch]` tables).
fn read_spec(file: &PathBuf) -> Result<Value> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| anyhow!("cannot read stdin: {e}"))?
    } else {
        std::fs::read_to_string(file).map_err(|e| anyhow!("cannot read {}: {e}", file.display()))?
    };
    if file.extension().is_some_and(|e| e == "toml") {
        let t: toml::Value = toml::from_str(&text)
            .map_err(|e| anyhow!("invalid {}: {}", file.display(), e.to_string().trim()))?;
        return Ok(serde_json::to_value(t)?);
    }
    serde_json::from_str(&text).map_err(|e| anyhow!("invalid {}: {e}", file.display()))
}
