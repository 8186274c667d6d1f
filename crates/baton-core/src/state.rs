//! The job state machine: the one place that decides whether a job may move from one
//! state to another (DESIGN.md section 2).

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Scheduled,
    Awaiting,
    Queued,
    Running,
    Paused,
    Stopping,
    Crashed,
    Completed,
    Failed,
    Cancelled,
    Deleted,
}

impl State {
    pub const ALL: [State; 11] = [
        State::Scheduled,
        State::Awaiting,
        State::Queued,
        State::Running,
        State::Paused,
        State::Stopping,
        State::Crashed,
        State::Completed,
        State::Failed,
        State::Cancelled,
        State::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Awaiting => "awaiting",
            State::Queued => "queued",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopping => "stopping",
            State::Crashed => "crashed",
            State::Completed => "completed",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
            State::Deleted => "deleted",
        }
    }

    /// Parses a state name, accepting the seeds' aliases (`pending`, `processing`,
    /// `succeeded`, `stopped`, ...).
    pub fn parse(s: &str) -> Option<State> {
        let state = match s.to_ascii_lowercase().as_str() {
            "scheduled" | "delayed" => State::Scheduled,
            "awaiting" => State::Awaiting,
            "queued" | "pending" | "created" | "enqueued" => State::Queued,
            "running" | "processing" => State::Running,
            "paused" => State::Paused,
            "stopping" => State::Stopping,
            "crashed" => State::Crashed,
            "completed" | "succeeded" => State::Completed,
            "failed" => State::Failed,
            "cancelled" | "canceled" | "stopped" | "force_stopped" => State::Cancelled,
            "deleted" => State::Deleted,
            _ => return None,
        };
        Some(state)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Completed | State::Failed | State::Cancelled | State::Deleted
        )
    }

    /// A worker holds the job (its attempt's fencing token is live).
    pub fn is_executing(self) -> bool {
        matches!(self, State::Running | State::Paused | State::Stopping)
    }

    /// The state a new job may be created in.
    pub fn is_initial(self) -> bool {
        matches!(self, State::Scheduled | State::Awaiting | State::Queued)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused transition. `from` is `None` for a job that does not exist yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot move a job from {} to {to}", from.map_or("new", State::as_str))]
pub struct TransitionError {
    pub from: Option<State>,
    pub to: State,
}

/// Whether a job may move from `from` (`None`: a new job) to `to`.
///
/// Beyond DESIGN.md section 2, two edges lead back to `awaiting`, both for workflows: a
/// paused workflow holds its `queued` jobs there, and a workflow retry puts a failed or
/// cancelled job there until the jobs it depends on, retried too, have ended.
pub fn allowed(from: Option<State>, to: State) -> bool {
    use State::*;
    let Some(from) = from else {
        return to.is_initial();
    };
    match from {
        Scheduled => matches!(to, Queued | Cancelled | Deleted),
        Awaiting => matches!(to, Queued | Cancelled | Deleted),
        Queued => matches!(to, Running | Cancelled | Deleted | Awaiting),
        Running => matches!(
            to,
            Paused | Stopping | Completed | Failed | Scheduled | Queued | Crashed | Cancelled
        ),
        Paused => matches!(to, Running | Stopping | Cancelled | Crashed),
        Stopping => matches!(to, Cancelled | Completed | Failed | Crashed),
        Crashed => matches!(to, Queued | Failed | Cancelled),
        Completed => matches!(to, Queued | Deleted),
        Failed | Cancelled => matches!(to, Queued | Deleted | Awaiting),
        Deleted => matches!(to, Queued),
    }
}

/// Checks a transition; every state change in Baton goes through here.
pub fn check(from: Option<State>, to: State) -> Result<(), TransitionError> {
    if allowed(from, to) {
        Ok(())
    } else {
        Err(TransitionError { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::State::*;
    use super::*;
    use proptest::prelude::*;

    /// DESIGN.md section 2, written out edge by edge.
    const TABLE: &[(Option<State>, State)] = &[
        (None, Scheduled),
        (None, Awaiting),
        (None, Queued),
        (Some(Scheduled), Queued),
        (Some(Scheduled), Cancelled),
        (Some(Scheduled), Deleted),
        (Some(Awaiting), Queued),
        (Some(Awaiting), Cancelled),
        (Some(Awaiting), Deleted),
        (Some(Queued), Running),
        (Some(Queued), Cancelled),
        (Some(Queued), Deleted),
        (Some(Running), Paused),
        (Some(Running), Stopping),
        (Some(Running), Completed),
        (Some(Running), Failed),
        (Some(Running), Scheduled),
        (Some(Running), Queued),
        (Some(Running), Crashed),
        (Some(Running), Cancelled),
        (Some(Paused), Running),
        (Some(Paused), Stopping),
        (Some(Paused), Cancelled),
        (Some(Paused), Crashed),
        (Some(Stopping), Cancelled),
        (Some(Stopping), Completed),
        (Some(Stopping), Failed),
        (Some(Stopping), Crashed),
        (Some(Crashed), Queued),
        (Some(Crashed), Failed),
        (Some(Crashed), Cancelled),
        (Some(Completed), Queued),
        (Some(Failed), Queued),
        (Some(Cancelled), Queued),
        (Some(Deleted), Queued),
        (Some(Completed), Deleted),
        (Some(Failed), Deleted),
        (Some(Cancelled), Deleted),
        // Workflows: a pause holds queued jobs; a retry waits for retried dependencies.
        (Some(Queued), Awaiting),
        (Some(Failed), Awaiting),
        (Some(Cancelled), Awaiting),
    ];

    #[test]
    fn every_listed_transition_is_allowed() {
        for &(from, to) in TABLE {
            assert_eq!(check(from, to), Ok(()), "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn the_table_has_no_duplicates() {
        let mut seen = std::collections::HashSet::new();
        for edge in TABLE {
            assert!(seen.insert(*edge), "{edge:?} twice");
        }
    }

    #[test]
    fn refusals_name_both_states() {
        let e = check(Some(Completed), Running).unwrap_err();
        assert_eq!(e.to_string(), "cannot move a job from completed to running");
        let e = check(None, Running).unwrap_err();
        assert_eq!(e.to_string(), "cannot move a job from new to running");
    }

    #[test]
    fn names_and_aliases_parse() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        for (alias, s) in [
            ("pending", Queued),
            ("created", Queued),
            ("enqueued", Queued),
            ("processing", Running),
            ("succeeded", Completed),
            ("stopped", Cancelled),
            ("force_stopped", Cancelled),
        ] {
            assert_eq!(State::parse(alias), Some(s), "{alias}");
        }
        assert_eq!(State::parse("sleeping"), None);
    }

    #[test]
    fn terminal_states_are_the_four_of_the_design() {
        let terminal: Vec<_> = State::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, vec![Completed, Failed, Cancelled, Deleted]);
    }

    fn any_from() -> impl Strategy<Value = Option<State>> {
        prop_oneof![Just(None), (0..11usize).prop_map(|i| Some(State::ALL[i]))]
    }

    proptest! {
        #[test]
        fn no_transition_outside_the_table_is_accepted(from in any_from(), i in 0..11usize) {
            let to = State::ALL[i];
            let listed = TABLE.contains(&(from, to));
            prop_assert_eq!(check(from, to).is_ok(), listed);
        }
    }
}
