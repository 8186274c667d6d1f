//! `baton cancel|retry|pause|resume|stop|rm` on several jobs: more than one id, or
//! the list filters, in one `POST /api/jobs/bulk`.

use anyhow::{Result, bail};
use baton_api::{BulkRequest, BulkResponse, ListFilter};

use crate::client::{Client, exit};

/// The jobs a control command acts on: ids, or a filter (the flags of `baton ls`).
#[derive(clap::Args, Debug, Default)]
pub struct Targets {
    /// The jobs; more than one is sent as one bulk request.
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Every job in these states (comma separated).
    #[arg(long)]
    pub state: Option<String>,
    /// Every job of this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Every job of this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Every job with this label (key:value).
    #[arg(long)]
    pub label: Option<String>,
    /// Every job with this text in its id, kind or labels.
    #[arg(short, long)]
    pub q: Option<String>,
    /// Every job of this workflow.
    #[arg(long)]
    pub workflow: Option<String>,
    /// Every job submitted by this schedule.
    #[arg(long)]
    pub schedule: Option<String>,
    /// Act on every job (but deleted ones), up to the server's bulk limit; needed
    /// when no filter flag narrows the set.
    #[arg(long)]
    pub all_matching: bool,
}

/// What the command asks for: one job through its own endpoint, or many in bulk.
pub enum Plan {
    One(String),
    Bulk(BulkRequest),
}

impl Targets {
    /// `action` as the bulk API names it; the options apply to its action only.
    pub fn plan(
        self,
        action: &str,
        force: Option<bool>,
        from_checkpoint: Option<bool>,
    ) -> Result<Plan> {
        let filter = ListFilter {
            state: self.state,
            queue: self.queue,
            kind: self.kind,
            label: self.label,
            q: self.q,
            workflow: self.workflow,
            schedule: self.schedule,
        };
        let filtered = filter != ListFilter::default();
        let (ids, filter) = match (self.ids.len(), filtered || self.all_matching) {
            (0, false) => bail!(
                "give the jobs to {action}: one or more ids, filter flags (--state, --queue, --kind, --label, -q, --workflow, --schedule), or --all-matching for every job"
            ),
            (0, true) => (None, Some(filter)),
            (_, true) => bail!(
                "give either job ids or filter flags (--state, --queue, ..., --all-matching), not both"
            ),
            (1, false) => return Ok(Plan::One(self.ids.into_iter().next().unwrap_or_default())),
            (_, false) => (Some(self.ids), None),
        };
        Ok(Plan::Bulk(BulkRequest {
            action: action.into(),
            ids,
            filter,
            force: force.filter(|f| *f),
            from_checkpoint: from_checkpoint.filter(|f| *f),
        }))
    }
}

/// Sends one bulk request and prints its counts (`--json`: the answer). Exits 1 when a
/// job was refused, so that a script notices.
pub fn run(c: &Client, request: &BulkRequest) -> Result<u8> {
    let body = serde_json::to_value(request)?;
    let out: BulkResponse = c.call("POST", "/api/jobs/bulk", Some(&body))?;
    if c.json {
        c.print_json(&out);
    } else {
        print(&out);
    }
    Ok(if out.refused.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    })
}

fn print(out: &BulkResponse) {
    let action = serde_json::to_value(out.action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    println!("{action}: {} done of {} matched", out.done, out.matched);
    for (code, n) in &out.refused {
        println!("  refused {n}: {code}");
    }
    for e in &out.errors {
        println!("  {} {}: {}", e.id, e.code, e.message);
    }
    if out.capped {
        println!(
            "  stopped at the server's bulk limit of {} jobs; more matched: run it again for the rest",
            out.limit
        );
    }
}
