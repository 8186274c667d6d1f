//! Workflows: the workflow spec with its local names, cycle detection, and the graph
//! that clients read back. Pure. The edge types live in `dependency`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dependency::{Condition, Dependency, EdgeStatus};
use crate::job::ErrorInfo;
use crate::spec::{JobSpec, SpecError, check_name, parse_depends_on};
use crate::state::State;
use crate::time::{Millis, opt_rfc3339, rfc3339};

/// The most jobs one workflow may hold.
pub const MAX_WORKFLOW_JOBS: usize = 100_000;

/// A workflow as clients submit it: jobs by local name, whose `depends_on` name other
/// jobs of the workflow (or ids of jobs stored already).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub jobs: BTreeMap<String, JobSpec>,
}

impl WorkflowSpec {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Adds a job under its local name.
    pub fn job(mut self, name: impl Into<String>, spec: JobSpec) -> Self {
        self.jobs.insert(name.into(), spec);
        self
    }

    /// Checks the names and the graph, and returns the jobs' local names in an order
    /// where every job comes after the jobs of the workflow it depends on, with each
    /// job's dependencies parsed (local names still local). A cycle is refused with
    /// its path: `a -> b -> c -> a` (each job runs before the next).
    pub fn plan(&self) -> Result<Vec<(String, Vec<Dependency>)>, SpecError> {
        if let Some(id) = &self.id {
            crate::id::JobId::parse(id).map_err(|m| SpecError::new("id", m))?;
        }
        if self.jobs.is_empty() {
            return Err(SpecError::new("jobs", "a workflow needs at least one job"));
        }
        if self.jobs.len() > MAX_WORKFLOW_JOBS {
            return Err(SpecError::new(
                "jobs",
                format!(
                    "has {} jobs; at most {MAX_WORKFLOW_JOBS} are allowed",
                    self.jobs.len()
                ),
            ));
        }
        // Names by index, in name order; edges inside the workflow as indices, parent
        // -> children. Other references are ids of jobs stored already, checked by the
        // store.
        let names: Vec<&str> = self.jobs.keys().map(String::as_str).collect();
        let index: std::collections::HashMap<&str, usize> =
            names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut deps: Vec<Vec<Dependency>> = Vec::with_capacity(names.len());
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
        let mut indegree = vec![0usize; names.len()];
        for (i, (name, spec)) in self.jobs.iter().enumerate() {
            check_name("jobs", name, 128)?;
            let field = format!("jobs.{name}.depends_on");
            let parsed = parse_depends_on(&field, spec.depends_on.as_deref().unwrap_or(&[]))?;
            for d in &parsed {
                if let Some(&parent) = index.get(d.job.as_str()) {
                    children[parent].push(i);
                    indegree[i] += 1;
                }
            }
            deps.push(parsed);
        }
        if let Some(cycle) = cycle_of(&children) {
            let path: Vec<&str> = cycle.iter().map(|i| names[*i]).collect();
            return Err(SpecError::new(
                "jobs",
                format!("the dependencies form a cycle: {}", path.join(" -> ")),
            ));
        }
        // Kahn's order, ties by name (the smallest index first).
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = indegree
            .iter()
            .enumerate()
            .filter(|(_, d)| **d == 0)
            .map(|(i, _)| std::cmp::Reverse(i))
            .collect();
        let mut deps: Vec<Option<Vec<Dependency>>> = deps.into_iter().map(Some).collect();
        let mut out = Vec::with_capacity(names.len());
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            out.push((names[i].to_owned(), deps[i].take().unwrap_or_default()));
            for &c in &children[i] {
                indegree[c] -= 1;
                if indegree[c] == 0 {
                    ready.push(std::cmp::Reverse(c));
                }
            }
        }
        Ok(out)
    }
}

/// Finds a cycle in a directed graph given as `node -> successors`; returns its path,
/// starting and ending at its smallest node (`a -> b -> a`), or `None` for a DAG.
pub fn find_cycle<'a>(
    nodes: impl Iterator<Item = &'a str>,
    edges: &BTreeMap<&'a str, Vec<&'a str>>,
) -> Option<Vec<String>> {
    let mut names: Vec<&str> = nodes.collect();
    names.sort_unstable();
    names.dedup();
    let index: std::collections::HashMap<&str, usize> =
        names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    for (from, tos) in edges {
        if let Some(&f) = index.get(from) {
            succ[f].extend(tos.iter().filter_map(|t| index.get(t).copied()));
        }
    }
    cycle_of(&succ).map(|c| c.iter().map(|i| names[*i].to_owned()).collect())
}

/// A cycle of the graph `node -> successors` (nodes by index), starting and ending at
/// its smallest node; `None` for a DAG. Iterative, so a chain of any length cannot
/// overflow the stack.
fn cycle_of(succ: &[Vec<usize>]) -> Option<Vec<usize>> {
    const NEW: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut mark = vec![NEW; succ.len()];
    for start in 0..succ.len() {
        if mark[start] != NEW {
            continue;
        }
        // The current path, each node with the index of its next successor to visit.
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = ON_PATH;
        while let Some(top) = path.last_mut() {
            let node = top.0;
            if top.1 >= succ[node].len() {
                mark[node] = DONE;
                path.pop();
                continue;
            }
            let to = succ[node][top.1];
            top.1 += 1;
            match mark[to] {
                NEW => {
                    mark[to] = ON_PATH;
                    path.push((to, 0));
                }
                ON_PATH => {
                    let from = path.iter().position(|(n, _)| *n == to).unwrap_or(0);
                    let mut cycle: Vec<usize> = path[from..].iter().map(|(n, _)| *n).collect();
                    let smallest = (0..cycle.len()).min_by_key(|i| cycle[*i]).unwrap_or(0);
                    cycle.rotate_left(smallest);
                    cycle.push(cycle[0]);
                    return Some(cycle);
                }
                _ => {}
            }
        }
    }
    None
}

/// A workflow's state, derived from its jobs' states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowState {
    /// Nothing has started yet.
    Pending,
    /// Some jobs run, wait or are done, and some are still to come.
    Running,
    /// Paused by a user: nothing new starts.
    Paused,
    /// Every job completed (or was deleted).
    Completed,
    /// Every job ended and at least one failed.
    Failed,
    /// Every job ended, none failed, and at least one was cancelled.
    Cancelled,
}

impl WorkflowState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowState::Pending => "pending",
            WorkflowState::Running => "running",
            WorkflowState::Paused => "paused",
            WorkflowState::Completed => "completed",
            WorkflowState::Failed => "failed",
            WorkflowState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            WorkflowState::Completed | WorkflowState::Failed | WorkflowState::Cancelled
        )
    }

    /// The state of a workflow whose jobs are in `states`.
    pub fn derive(paused: bool, states: impl IntoIterator<Item = State>) -> WorkflowState {
        let (mut active, mut started, mut failed, mut cancelled) = (false, false, false, false);
        for s in states {
            match s {
                State::Awaiting | State::Queued | State::Scheduled => active = true,
                State::Running | State::Paused | State::Stopping | State::Crashed => {
                    active = true;
                    started = true;
                }
                State::Completed | State::Deleted => started = true,
                State::Failed => {
                    started = true;
                    failed = true;
                }
                State::Cancelled => {
                    started = true;
                    cancelled = true;
                }
            }
        }
        if active {
            return if paused {
                WorkflowState::Paused
            } else if started {
                WorkflowState::Running
            } else {
                WorkflowState::Pending
            };
        }
        if failed {
            WorkflowState::Failed
        } else if cancelled {
            WorkflowState::Cancelled
        } else {
            WorkflowState::Completed
        }
    }
}

impl std::fmt::Display for WorkflowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A workflow with its jobs and edges, as the dashboard draws it
/// (`GET /api/workflows/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowGraph {
    pub id: String,
    pub state: WorkflowState,
    pub paused: bool,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Millis,
    /// Jobs per state.
    pub counts: BTreeMap<String, u64>,
    /// Local name to job id.
    pub jobs: BTreeMap<String, String>,
    pub nodes: Vec<WorkflowNode>,
    pub edges: Vec<WorkflowEdge>,
}

/// A workflow in the list (`GET /api/workflows`): its jobs counted, not listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowSummary {
    pub id: String,
    pub state: WorkflowState,
    pub paused: bool,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Millis,
    /// Its jobs.
    pub jobs: u64,
    /// Jobs per state (states with none are left out).
    pub counts: BTreeMap<String, u64>,
}

/// One job of a workflow graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowNode {
    pub id: String,
    pub name: Option<String>,
    pub kind: String,
    pub queue: String,
    pub state: State,
    pub progress: Option<f64>,
    pub attempt: u32,
    #[serde(with = "opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Millis>,
    #[serde(with = "opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Millis>,
    pub error: Option<ErrorInfo>,
}

/// An edge: `to` depends on `from` with condition `on`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowEdge {
    pub from: String,
    pub to: String,
    pub on: Condition,
    pub status: EdgeStatus,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use serde_json::json;

    fn cycle_of(edges: &[(&'static str, &'static str)]) -> Option<String> {
        let mut names: BTreeSet<&str> = BTreeSet::new();
        let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (a, b) in edges {
            names.insert(a);
            names.insert(b);
            map.entry(a).or_default().push(b);
        }
        find_cycle(names.into_iter(), &map).map(|c| c.join(" -> "))
    }

    #[test]
    fn cycles_are_named_from_their_smallest_node() {
        assert_eq!(cycle_of(&[("a", "a")]).as_deref(), Some("a -> a"));
        assert_eq!(
            cycle_of(&[("b", "a"), ("a", "b")]).as_deref(),
            Some("a -> b -> a")
        );
        assert_eq!(
            cycle_of(&[("x", "c"), ("c", "a"), ("a", "b"), ("b", "c")]).as_deref(),
            Some("a -> b -> c -> a")
        );
        assert_eq!(cycle_of(&[("a", "b"), ("b", "c"), ("a", "c")]), None);
    }

    #[test]
    fn a_long_chain_is_checked_without_recursion() {
        let names: Vec<String> = (0..200_000).map(|i| format!("n{i:06}")).collect();
        let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for w in names.windows(2) {
            map.entry(&w[0]).or_default().push(&w[1]);
        }
        assert_eq!(find_cycle(names.iter().map(String::as_str), &map), None);
        map.entry(&names[names.len() - 1])
            .or_default()
            .push(&names[0]);
        let cycle = find_cycle(names.iter().map(String::as_str), &map).unwrap();
        assert_eq!(cycle.len(), names.len() + 1);
        assert_eq!(cycle[0], "n000000");
    }

    fn plan(wf: serde_json::Value) -> Result<Vec<String>, SpecError> {
        let spec: WorkflowSpec = serde_json::from_value(wf).unwrap();
        spec.plan().map(|p| p.into_iter().map(|(n, _)| n).collect())
    }

    #[test]
    fn plans_order_jobs_after_their_dependencies() {
        let order = plan(json!({"jobs": {
            "d": {"kind": "x", "depends_on": ["b", "c"]},
            "c": {"kind": "x", "depends_on": [{"job": "a", "on": "failed"}]},
            "b": {"kind": "x", "depends_on": ["a", "outside-job"]},
            "a": {"kind": "x"},
        }}))
        .unwrap();
        assert_eq!(order, ["a", "b", "c", "d"]);
    }

    #[test]
    fn bad_workflows_name_the_problem() {
        let check = |wf: serde_json::Value, field: &str, part: &str| {
            let e = plan(wf.clone()).expect_err(&wf.to_string());
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(part), "{e} lacks {part}");
        };
        check(json!({"jobs": {}}), "jobs", "at least one");
        check(
            json!({"jobs": {"a": {"kind": "x", "depends_on": ["a"]}}}),
            "jobs",
            "cycle: a -> a",
        );
        check(
            json!({"jobs": {"a": {"kind": "x", "depends_on": ["b"]}, "b": {"kind": "x", "depends_on": ["a"]}}}),
            "jobs",
            "cycle: a -> b -> a",
        );
        check(
            json!({"jobs": {
                "a": {"kind": "x", "depends_on": ["c"]},
                "b": {"kind": "x", "depends_on": ["a"]},
                "c": {"kind": "x", "depends_on": ["b"]},
                "d": {"kind": "x", "depends_on": ["a"]},
            }}),
            "jobs",
            "cycle: a -> b -> c -> a",
        );
        check(json!({"jobs": {"a b": {"kind": "x"}}}), "jobs", "' '");
        check(
            json!({"jobs": {"a": {"kind": "x", "depends_on": [{"job": "b", "on": "maybe"}]}}}),
            "jobs.a.depends_on[0].on",
            "not a condition",
        );
        check(
            json!({"jobs": {"a": {"kind": "x", "depends_on": ["b", "b"]}}}),
            "jobs.a.depends_on[1]",
            "twice",
        );
        check(
            json!({"jobs": {"a": {"kind": "x", "depends_on": [7]}}}),
            "jobs.a.depends_on[0]",
            "neither",
        );
        check(
            json!({"id": "w x", "jobs": {"a": {"kind": "x"}}}),
            "id",
            "' '",
        );
    }

    #[test]
    fn conditions_hold_by_the_final_state() {
        use Condition::*;
        for (on, state, expected) in [
            (Completed, State::Completed, Some(true)),
            (Completed, State::Failed, Some(false)),
            (Completed, State::Cancelled, Some(false)),
            (Completed, State::Running, None),
            (Failed, State::Failed, Some(true)),
            (Failed, State::Completed, Some(false)),
            (Failed, State::Cancelled, Some(false)),
            (Finished, State::Cancelled, Some(true)),
            (Finished, State::Deleted, Some(true)),
            (Finished, State::Queued, None),
        ] {
            assert_eq!(on.holds(state), expected, "{on:?} {state:?}");
        }
    }

    #[test]
    fn workflow_states_derive_from_jobs() {
        use State::*;
        let check = |paused, states: &[State], expected| {
            assert_eq!(
                WorkflowState::derive(paused, states.iter().copied()),
                expected,
                "{states:?}"
            );
        };
        check(false, &[Queued, Awaiting], WorkflowState::Pending);
        check(false, &[Completed, Awaiting], WorkflowState::Running);
        check(true, &[Completed, Awaiting], WorkflowState::Paused);
        check(false, &[Completed, Completed], WorkflowState::Completed);
        check(
            false,
            &[Completed, Failed, Cancelled],
            WorkflowState::Failed,
        );
        check(false, &[Completed, Cancelled], WorkflowState::Cancelled);
        check(true, &[Completed], WorkflowState::Completed);
    }
}
