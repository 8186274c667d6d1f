use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::time::{Millis, rfc3339};

/// An immutable record of something that happened. `id` is the global sequence number,
/// `seq` the job's own (0 for events without a job).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub id: u64,
    pub job_id: Option<String>,
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Millis,
    /// What happened, by type: a change of state has `state` and `from`; `job.crashed`
    /// also `reason`, `was`, `server_id` and `heartbeat_at` (the dead server and its
    /// last heartbeat, when known), `last_event_at`, `checkpoint` (`{seq, at, attempt}`
    /// or null) and `since_checkpoint` (`{from_seq, progress, steps, output,
    /// log_lines}`: the attempt's events after that checkpoint).
    pub data: Value,
}

macro_rules! event_kinds {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// The event types of DESIGN.md section 7.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        pub enum EventKind {
            $(#[serde(rename = $name)] #[schema(rename = $name)] $variant,)*
        }

        impl EventKind {
            pub const ALL: &[EventKind] = &[$(EventKind::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }

            pub fn parse(s: &str) -> Option<EventKind> {
                match s {
                    $($name => Some(EventKind::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

event_kinds! {
    Submitted => "job.submitted",
    Scheduled => "job.scheduled",
    Awaiting => "job.awaiting",
    Queued => "job.queued",
    Started => "job.started",
    Progress => "job.progress",
    Step => "job.step",
    Output => "job.output",
    Log => "job.log",
    Checkpoint => "job.checkpoint",
    Paused => "job.paused",
    Resumed => "job.resumed",
    Stopping => "job.stopping",
    Retrying => "job.retrying",
    Completed => "job.completed",
    Failed => "job.failed",
    Cancelled => "job.cancelled",
    Crashed => "job.crashed",
    Recovered => "job.recovered",
    Deleted => "job.deleted",
    ScheduleFired => "schedule.fired",
    QueuePaused => "queue.paused",
    QueueResumed => "queue.resumed",
    ServerUp => "server.up",
    ServerDown => "server.down",
    ResourceAlert => "resource.alert",
    ResourceCleared => "resource.cleared",
    Usage => "job.usage",
}

impl EventKind {
    /// Whether this event ends the job (it reached a terminal state).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventKind::Completed | EventKind::Failed | EventKind::Cancelled | EventKind::Deleted
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_wire_shape() {
        let e = Event {
            id: 7,
            job_id: Some("j1".into()),
            seq: 2,
            kind: EventKind::Progress,
            at: 0,
            data: serde_json::json!({"progress": 0.5}),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "job.progress");
        assert_eq!(v["at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["id"], 7);
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(*k));
        }
    }
}
