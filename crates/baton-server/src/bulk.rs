//! `POST /api/jobs/bulk`: one control action on many jobs, named by id or matched by
//! the list filters, answered with what each job's call came to.
//!
//! Each job goes through the same engine call as its single-job endpoint (so each
//! change is its own transition with its usual event, and a refusal leaves the job
//! untouched); up to [`IN_FLIGHT`] calls run at once so that the store's group commit
//! batches their writes, and none holds the writer for longer than its own write. A
//! filter is walked in keyset pages of the job list ([`PAGE`] jobs, `seq` below the
//! last one seen), so a job that leaves the filter as it is changed (a cancelled job
//! no longer `queued`) moves no page boundary: every job that matched when its page
//! was read is visited exactly once, and jobs submitted after the walk began (their
//! `seq` is higher) are not. The next page is read while the last one's calls are
//! still in flight, so the calls never drain at a page's end.

use std::collections::{BTreeMap, HashSet};

use axum::Json;
use axum::extract::{Extension, State};
use baton_api::{BulkRefusal, BulkRequest, BulkResponse, ControlAction};
use baton_core::{Job, JobId};
use futures::StreamExt;

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ApiResult};
use crate::jobs::{ApiJson, job_filter};

/// The most jobs one bulk action reaches unless the server says otherwise.
pub const DEFAULT_BULK_LIMIT: usize = 100_000;
/// Jobs read per page of a filter.
const PAGE: usize = 500;
/// Control calls in flight at once: enough for group commit to batch them (about 15
/// transitions a commit), few enough that a commit stays short for other writers
/// (`baton bench bulk`: 256 in flight was only about 10 % faster).
const IN_FLIGHT: usize = 64;
/// Refusals quoted in full in the answer.
const QUOTED: usize = 20;

#[utoipa::path(post, operation_id = "bulk_control", path = "/api/jobs/bulk", tag = "control",
    request_body = baton_api::BulkRequest,
    responses((status = 200, description = "the action was tried on every job named or matched (up to the limit); refusals are counted, not applied", body = baton_api::BulkResponse),
        (status = 400, description = "an unknown action, both or neither of ids and filter, an invalid id (named by its index), more ids than the limit, an invalid state or label in the filter, from_checkpoint without retry or force without stop", body = baton_api::ErrorBody),
        (status = 403, description = "delete without the admin role, or a filter by a token narrowed to queues that does not name one of them in queue", body = baton_api::ErrorBody)))]
pub async fn bulk(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<BulkRequest>,
) -> ApiResult<Json<BulkResponse>> {
    let action = parse_action(&req.action)?;
    let call = Call {
        action,
        force: option("force", req.force, action == ControlAction::Stop, "stop")?,
        from_checkpoint: option(
            "from_checkpoint",
            req.from_checkpoint,
            action == ControlAction::Retry,
            "retry",
        )?,
    };
    let needed = if action == ControlAction::Delete {
        Role::Admin
    } else {
        Role::Operator
    };
    if caller.role < needed {
        return Err(ApiError::forbidden(format!(
            "the {} role may not {} jobs; it needs the {} role",
            caller.role.as_str(),
            req.action,
            needed.as_str()
        )));
    }
    let limit = s.bulk_limit;
    let mut tally = Tally::new(action, limit);
    match (req.ids, req.filter) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give either ids or filter, not both"));
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "give the jobs to act on: ids (a list of job ids) or filter (the list filters, e.g. {\"state\": \"queued\"})",
            ));
        }
        (Some(ids), None) => {
            if ids.len() > limit {
                return Err(ApiError::bad_request(format!(
                    "{} ids given; at most {limit} are allowed (bulk_limit)",
                    ids.len()
                )));
            }
            let mut seen = HashSet::with_capacity(ids.len());
            let mut unique = Vec::with_capacity(ids.len());
            for (i, id) in ids.into_iter().enumerate() {
                JobId::parse(&id)
                    .map_err(|m| ApiError::bad_request(format!("ids[{i}]: invalid job id: {m}")))?;
                if seen.insert(id.clone()) {
                    unique.push(id);
                }
            }
            let s = &s;
            let caller = &caller;
            let outcomes = futures::stream::iter(unique)
                .map(|id| async move {
                    let r = match &caller.queues {
                        // The job's queue decides whether this caller may touch it.
                        Some(_) => match s.engine.get(&id).await {
                            Ok(job) => call.run(s, caller, &job).await,
                            Err(e) => Err(ApiError::from(e)),
                        },
                        None => call.apply(s, &id).await,
                    };
                    (id, r)
                })
                .buffer_unordered(IN_FLIGHT);
            futures::pin_mut!(outcomes);
            while let Some((id, r)) = outcomes.next().await {
                tally.add(id, r);
            }
        }
        (None, Some(filter)) => {
            let filter = job_filter(&filter)?;
            if let Some(queues) = &caller.queues {
                // Narrowed to the caller's queues by the filter itself, not by refusing
                // the rest one by one: the count says what the caller reached.
                match &filter.queue {
                    Some(q) if queues.contains(q) => {}
                    _ => {
                        return Err(ApiError::forbidden(format!(
                            "token {:?} is limited to queues {queues:?}; a bulk filter must name one of them in queue",
                            caller.name
                        )));
                    }
                }
            }
            // Pages are read as the calls ask for more jobs, so the read of the next
            // page overlaps the calls of the last one and the calls in flight never
            // drain at a page's end.
            let engine = s.engine.clone();
            let pages = futures::stream::unfold(Some((filter, 0usize)), move |walk| {
                let engine = engine.clone();
                async move {
                    let (mut filter, seen) = walk?;
                    let room = limit - seen;
                    filter.limit = room.clamp(1, PAGE);
                    let page = match engine.list(filter.clone()).await {
                        Ok(page) => page,
                        Err(e) => return Some((vec![Item::Failed(e.into())], None)),
                    };
                    let count = page.jobs.len();
                    let capped = page.next_cursor.is_some() && count >= room;
                    let mut items: Vec<Item> = page
                        .jobs
                        .into_iter()
                        .map(|j| Item::Job(Box::new(j)))
                        .collect();
                    let next = match page.next_cursor {
                        Some(_) if capped => {
                            items.push(Item::Capped);
                            None
                        }
                        Some(cursor) => {
                            filter.cursor = Some(cursor);
                            Some((filter, seen + count))
                        }
                        None => None,
                    };
                    Some((items, next))
                }
            });
            let (s, caller) = (&s, &caller);
            let outcomes = pages
                .flat_map(futures::stream::iter)
                .map(|item| async move {
                    match item {
                        Item::Job(job) => {
                            let r = call.run(s, caller, &job).await;
                            Item::Done(job.id.to_string(), r)
                        }
                        other => other,
                    }
                })
                .buffer_unordered(IN_FLIGHT);
            futures::pin_mut!(outcomes);
            while let Some(item) = outcomes.next().await {
                match item {
                    Item::Done(id, r) => tally.add(id, r),
                    Item::Capped => tally.capped = true,
                    Item::Failed(e) => return Err(e),
                    Item::Job(_) => {}
                }
            }
        }
    }
    Ok(Json(tally.into_response()))
}

/// A step of a filter's walk: a job to act on, what came of it, or the end of it.
enum Item {
    Job(Box<Job>),
    Done(String, Result<(), ApiError>),
    /// More jobs matched than the limit.
    Capped,
    /// A page could not be read.
    Failed(ApiError),
}

/// The action and its options, as each job's call needs them.
#[derive(Clone, Copy)]
struct Call {
    action: ControlAction,
    force: bool,
    from_checkpoint: bool,
}

impl Call {
    /// Applies the call to `job` if the caller may change a job of its queue.
    async fn run(self, s: &AppState, caller: &Caller, job: &Job) -> Result<(), ApiError> {
        caller.check_queue(&job.queue)?;
        self.apply(s, &job.id).await
    }

    async fn apply(self, s: &AppState, id: &str) -> Result<(), ApiError> {
        let e = &s.engine;
        let r = match self.action {
            ControlAction::Pause => e.pause(id).await,
            ControlAction::Resume => e.resume(id).await,
            ControlAction::Stop => e.stop(id, self.force).await,
            ControlAction::Cancel => e.cancel(id).await,
            ControlAction::Retry => e.retry(id, self.from_checkpoint).await,
            ControlAction::Delete => e.delete(id).await,
        };
        r.map(drop).map_err(ApiError::from)
    }
}

/// The counts of the answer, kept as the outcomes come in.
struct Tally {
    action: ControlAction,
    matched: u64,
    done: u64,
    refused: BTreeMap<String, u64>,
    errors: Vec<BulkRefusal>,
    capped: bool,
    limit: usize,
}

impl Tally {
    fn new(action: ControlAction, limit: usize) -> Self {
        Self {
            action,
            matched: 0,
            done: 0,
            refused: BTreeMap::new(),
            errors: Vec::new(),
            capped: false,
            limit,
        }
    }

    fn add(&mut self, id: String, outcome: Result<(), ApiError>) {
        self.matched += 1;
        match outcome {
            Ok(()) => self.done += 1,
            Err(e) => {
                *self.refused.entry(e.code.to_owned()).or_default() += 1;
                if self.errors.len() < QUOTED {
                    self.errors.push(BulkRefusal {
                        id,
                        code: e.code.into(),
                        message: e.message,
                    });
                }
            }
        }
    }

    fn into_response(self) -> BulkResponse {
        BulkResponse {
            action: self.action,
            matched: self.matched,
            done: self.done,
            refused: self.refused,
            capped: self.capped,
            limit: self.limit as u64,
            errors: self.errors,
        }
    }
}

fn parse_action(name: &str) -> ApiResult<ControlAction> {
    Ok(match name {
        "cancel" => ControlAction::Cancel,
        "retry" => ControlAction::Retry,
        "pause" => ControlAction::Pause,
        "resume" => ControlAction::Resume,
        "stop" => ControlAction::Stop,
        "delete" => ControlAction::Delete,
        other => {
            return Err(ApiError::bad_request(format!(
                "invalid action {other:?}: expected one of cancel, retry, pause, resume, stop, delete"
            )));
        }
    })
}

/// An option that only one action takes: refused with any other.
fn option(name: &str, value: Option<bool>, applies: bool, only: &str) -> ApiResult<bool> {
    match value {
        Some(_) if !applies => Err(ApiError::bad_request(format!(
            "{name} applies to the {only} action only"
        ))),
        v => Ok(v.unwrap_or(false)),
    }
}
