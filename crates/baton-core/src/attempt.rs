//! A job's attempts, read from its events: the event log is the one record of what
//! each attempt did, so attempts cost no write of their own.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Event, EventKind};
use crate::job::ErrorInfo;
use crate::resources::Usage;
use crate::time::{Millis, opt_rfc3339, rfc3339};

/// The events that start or end an attempt; the others do not change attempts.
pub const ATTEMPT_EVENTS: &[EventKind] = &[
    EventKind::Started,
    EventKind::Completed,
    EventKind::Failed,
    EventKind::Retrying,
    EventKind::Crashed,
    EventKind::Cancelled,
    EventKind::Queued,
    EventKind::Usage,
];

/// One attempt of a job (`GET /api/jobs/{id}/attempts`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    /// The attempt's number, as the job's `attempt` counts. An attempt that a crash or
    /// a shutdown interrupted goes on under the same number, as a second entry.
    pub attempt: u32,
    /// Whether this entry goes on with an attempt that a crash or a shutdown
    /// interrupted (the one before it has the same number).
    pub continued: bool,
    /// The server that ran it.
    pub server_id: Option<String>,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Millis,
    #[serde(with = "opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Millis>,
    /// How it ended; `null` while it runs (or is paused or stopping).
    pub outcome: Option<Outcome>,
    pub error: Option<ErrorInfo>,
    /// The exit code of the job's process (command and pipeline kinds): 0 when it
    /// completed, the code when it exited with another.
    pub exit_code: Option<i32>,
    /// The signal that killed the job's process (`SIGKILL`).
    pub signal: Option<String>,
    /// Whether the attempt was retried after it failed.
    pub retried: bool,
    /// The checkpoint the attempt resumed from, when it did.
    pub resumed_from: Option<CheckpointRef>,
    /// What its processes used (command and pipeline kinds): the usage recorded
    /// with its end, or its last `job.usage` event; `null` when none was measured.
    pub usage: Option<Usage>,
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    Failed,
    /// Stopped or cancelled by a user.
    Cancelled,
    /// Its server died, or the engine restarted, while it ran.
    Crashed,
    /// Its server shut down gracefully and handed the job back to its queue.
    Interrupted,
}

/// A saved checkpoint of the job: its `seq` in `GET /api/jobs/{id}/checkpoints`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointRef {
    pub seq: u64,
    pub step: Option<String>,
}

/// Folds a job's events, in the job's order, into its attempts. Events other than
/// [`ATTEMPT_EVENTS`] may be given and are passed over. `runs_process` says whether the
/// job's kind runs a process (command, pipeline): its completed attempts exited 0.
pub fn from_events<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    runs_process: bool,
) -> Vec<Attempt> {
    let mut out: Vec<Attempt> = Vec::new();
    for e in events {
        if e.kind == EventKind::Started {
            let attempt = e.data["attempt"].as_u64().unwrap_or(out.len() as u64 + 1) as u32;
            out.push(Attempt {
                attempt,
                continued: out.last().is_some_and(|a| a.attempt == attempt),
                server_id: e.data["server_id"].as_str().map(str::to_owned),
                started_at: e.at,
                finished_at: None,
                outcome: None,
                error: None,
                exit_code: None,
                signal: None,
                retried: false,
                resumed_from: serde_json::from_value(e.data["checkpoint"].clone()).ok(),
                usage: None,
            });
            continue;
        }
        let Some(open) = out.last_mut().filter(|a| a.outcome.is_none()) else {
            continue;
        };
        // A usage event, or the usage an attempt's end carries, is its latest.
        if let Ok(usage) = serde_json::from_value::<Usage>(match e.kind {
            EventKind::Usage => e.data.clone(),
            _ => e.data["usage"].clone(),
        }) {
            open.usage = Some(usage);
        }
        let outcome = match e.kind {
            EventKind::Completed => Outcome::Completed,
            EventKind::Failed | EventKind::Retrying => Outcome::Failed,
            EventKind::Crashed => Outcome::Crashed,
            EventKind::Cancelled => Outcome::Cancelled,
            // Handed back at a graceful shutdown.
            EventKind::Queued => Outcome::Interrupted,
            _ => continue,
        };
        open.outcome = Some(outcome);
        open.finished_at = Some(e.at);
        open.retried = e.kind == EventKind::Retrying;
        open.error = match outcome {
            Outcome::Completed | Outcome::Interrupted => None,
            Outcome::Crashed => Some(ErrorInfo::new(
                "crashed",
                e.data["reason"].as_str().unwrap_or("crashed"),
            )),
            Outcome::Cancelled => Some(ErrorInfo::new(
                "cancelled",
                match (e.data["reason"].as_str(), e.data["force"].as_bool()) {
                    (Some("stopped"), Some(true)) => "force stopped by a user",
                    (Some("stopped"), _) => "stopped by a user",
                    _ => "cancelled by a user",
                },
            )),
            Outcome::Failed => serde_json::from_value(e.data["error"].clone()).ok(),
        };
        open.exit_code = match (outcome, &e.data["exit_code"]) {
            (Outcome::Completed, _) if runs_process => Some(0),
            (_, Value::Number(n)) => n.as_i64().map(|n| n as i32),
            _ => None,
        };
        open.signal = e.data["signal"].as_str().map(str::to_owned);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ev(seq: u64, kind: EventKind, data: Value) -> Event {
        Event {
            id: seq,
            job_id: Some("j".into()),
            seq,
            kind,
            at: seq as Millis * 1000,
            data,
        }
    }

    #[test]
    fn a_retry_then_a_crash_then_a_resumed_completion_are_three_attempts() {
        let events = [
            ev(1, EventKind::Submitted, json!({})),
            ev(2, EventKind::Queued, json!({"state": "queued"})),
            ev(
                3,
                EventKind::Started,
                json!({"attempt": 1, "server_id": "s1"}),
            ),
            ev(4, EventKind::Progress, json!({"progress": 0.5})),
            ev(
                5,
                EventKind::Retrying,
                json!({"error": {"code": "exit_code", "message": "exited with code 3"}, "exit_code": 3}),
            ),
            ev(6, EventKind::Queued, json!({"state": "queued"})),
            ev(
                7,
                EventKind::Started,
                json!({"attempt": 2, "server_id": "s1"}),
            ),
            ev(
                8,
                EventKind::Crashed,
                json!({"reason": "the engine stopped while the job ran"}),
            ),
            ev(9, EventKind::Recovered, json!({"from_checkpoint": true})),
            ev(
                10,
                EventKind::Started,
                json!({"attempt": 2, "server_id": "s2", "checkpoint": {"seq": 4, "step": "b"}}),
            ),
            ev(11, EventKind::Completed, json!({})),
        ];
        let a = from_events(&events, true);
        assert_eq!(a.len(), 3);
        assert_eq!(
            (a[0].attempt, a[0].outcome, a[0].exit_code, a[0].retried),
            (1, Some(Outcome::Failed), Some(3), true)
        );
        assert_eq!(a[0].error.as_ref().unwrap().code, "exit_code");
        assert_eq!((a[0].started_at, a[0].finished_at), (3000, Some(5000)));
        assert_eq!(
            (a[1].outcome, a[1].error.as_ref().unwrap().code.as_str()),
            (Some(Outcome::Crashed), "crashed")
        );
        assert_eq!(a[1].resumed_from, None);
        assert_eq!(a[2].server_id.as_deref(), Some("s2"));
        assert_eq!(
            a.iter()
                .map(|a| (a.attempt, a.continued))
                .collect::<Vec<_>>(),
            [(1, false), (2, false), (2, true)]
        );
        assert_eq!(
            a[2].resumed_from,
            Some(CheckpointRef {
                seq: 4,
                step: Some("b".into())
            })
        );
        assert_eq!(
            (a[2].outcome, a[2].exit_code, a[2].error.clone()),
            (Some(Outcome::Completed), Some(0), None)
        );
    }

    #[test]
    fn a_running_attempt_has_no_outcome_and_a_handler_has_no_exit_code() {
        let events = [
            ev(1, EventKind::Started, json!({"attempt": 1})),
            ev(2, EventKind::Completed, json!({})),
            ev(3, EventKind::Queued, json!({"reason": "retry"})),
            ev(4, EventKind::Started, json!({"attempt": 2})),
            ev(5, EventKind::Paused, json!({})),
        ];
        let a = from_events(&events, false);
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].outcome, a[0].exit_code),
            (Some(Outcome::Completed), None)
        );
        assert_eq!((a[1].outcome, a[1].finished_at), (None, None));
    }

    #[test]
    fn usage_comes_from_the_end_of_an_attempt_or_its_last_usage_event() {
        let usage = |cpu: u64| {
            json!({"attempt": 1, "cpu_ms": cpu, "rss_bytes": 10, "peak_rss_bytes": 20,
                   "at": "2026-01-01T00:00:00Z"})
        };
        let events = [
            ev(1, EventKind::Started, json!({"attempt": 1})),
            ev(2, EventKind::Usage, usage(100)),
            ev(3, EventKind::Usage, usage(200)),
            ev(4, EventKind::Crashed, json!({"reason": "crashed"})),
            ev(5, EventKind::Started, json!({"attempt": 1})),
            ev(6, EventKind::Usage, usage(300)),
            ev(7, EventKind::Failed, json!({"usage": usage(400)})),
            ev(8, EventKind::Started, json!({"attempt": 2})),
        ];
        let a = from_events(&events, true);
        let cpu: Vec<Option<u64>> = a
            .iter()
            .map(|a| a.usage.as_ref().map(|u| u.cpu_ms))
            .collect();
        assert_eq!(cpu, [Some(200), Some(400), None]);
    }

    #[test]
    fn a_signal_and_a_force_stop_are_told_apart() {
        let events = [
            ev(1, EventKind::Started, json!({"attempt": 1})),
            ev(
                2,
                EventKind::Failed,
                json!({"error": {"code": "signal", "message": "killed by SIGKILL"}, "signal": "SIGKILL"}),
            ),
            ev(3, EventKind::Started, json!({"attempt": 2})),
            ev(
                4,
                EventKind::Cancelled,
                json!({"reason": "stopped", "force": true}),
            ),
        ];
        let a = from_events(&events, true);
        assert_eq!(
            (a[0].signal.as_deref(), a[0].exit_code),
            (Some("SIGKILL"), None)
        );
        assert_eq!(a[1].outcome, Some(Outcome::Cancelled));
        assert_eq!(
            a[1].error.as_ref().unwrap().message,
            "force stopped by a user"
        );
    }
}
