//! `/api/jobs`: submit, read, wait and control.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use baton_api::{CheckpointList, JobList, ListFilter, StatusRequest, StatusResponse};
use baton_core::{JobId, JobSpec, State as JobState};
use baton_engine::JobFilter;
use baton_store::{JobCursor, JobSort, search_terms};
use serde::Deserialize;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
pub use crate::json::ApiJson;

/// A path's parameters whose rejections speak the API's error model (a segment
/// that is not valid UTF-8 once decoded is a 400 with the JSON error body).
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// A query string whose rejections speak the API's error model.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

// The derives above name these conversions.
const _: fn(QueryRejection) -> ApiError = ApiError::from;
const _: fn(PathRejection) -> ApiError = ApiError::from;

/// Checks a job id from the path before it reaches the store.
pub fn job_id(id: &str) -> ApiResult<&str> {
    JobId::parse(id).map_err(|m| ApiError::bad_request(format!("invalid job id: {m}")))?;
    Ok(id)
}

#[utoipa::path(post, operation_id = "submit_job", path = "/api/jobs", tag = "jobs", request_body = baton_core::JobSpec,
    responses((status = 201, description = "created", body = baton_core::Job),
        (status = 200, description = "a job with this client id exists", body = baton_core::Job),
        (status = 403, description = "the token's role may not submit, or the server's commands policy does not allow a program the job would run (code command_not_allowed); nothing is stored", body = baton_api::ErrorBody),
        (status = 409, description = "its unique_key is held by another job (unique_policy reject)", body = baton_api::ErrorBody),
        (status = 422, description = "invalid spec: a bad field, an unknown kind or queue, an unknown dependency, a secret env value on a server without a secret_key", body = baton_api::ErrorBody),
        (status = 507, description = "the store's disk is low (under `disk_free_below`): code insufficient_storage, the message names the disk's free space and the threshold; nothing is stored", body = baton_api::ErrorBody)))]
pub async fn submit(
    State(s): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    ApiJson(spec): ApiJson<JobSpec>,
) -> ApiResult<Response> {
    if let Some(axum::Extension(caller)) = &caller {
        check_scope(&s, caller, &spec, &mut HashMap::new()).await?;
    }
    let submitted = s.engine.submit(spec).await?;
    let status = if submitted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(submitted.job)).into_response())
}

/// Holds a caller narrowed to some queues to them: the queue the job will go to (its
/// own, its stored pipeline's, or the default) must be one of the token's, and
/// `unique_policy: replace` is refused (it cancels the key's holder in whatever
/// queue). `pipelines` remembers the stored pipelines' queues already looked up.
pub(crate) async fn check_scope(
    s: &AppState,
    caller: &crate::auth::Caller,
    spec: &JobSpec,
    pipelines: &mut HashMap<String, Option<String>>,
) -> ApiResult<()> {
    if caller.queues.is_none() {
        return Ok(());
    }
    let mut queue = spec.queue.clone();
    if queue.is_none()
        && spec.steps.is_none()
        && let Some(id) = &spec.pipeline
    {
        queue = match pipelines.get(id) {
            Some(q) => q.clone(),
            None => {
                let q = s.engine.pipeline(id).await?.and_then(|p| p.spec.queue);
                pipelines.insert(id.clone(), q.clone());
                q
            }
        };
    }
    caller.check_queue(queue.as_deref().unwrap_or(baton_core::spec::DEFAULT_QUEUE))?;
    if spec.unique_policy.as_deref() == Some("replace") {
        return Err(ApiError::forbidden(format!(
            "token {:?} is limited to queues {:?}; it may not use unique_policy \"replace\", which cancels the key's holder in whatever queue",
            caller.name,
            caller.queues.as_deref().unwrap_or_default()
        )));
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    queue: Option<String>,
    kind: Option<String>,
    label: Option<String>,
    q: Option<String>,
    workflow: Option<String>,
    schedule: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    sort: Option<String>,
}

#[utoipa::path(get, operation_id = "list_jobs", path = "/api/jobs", tag = "jobs",
    params(("state" = Option<String>, Query, description = "states, comma separated; aliases accepted"),
        ("queue" = Option<String>, Query), ("kind" = Option<String>, Query),
        ("label" = Option<String>, Query, description = "key:value"),
        ("q" = Option<String>, Query, description = "words of the id (or its last 4, 6 or 8 characters), kind, labels (key:value or key=value) or error; terms separated by spaces, all must match; a term whose last word has 3 or more characters matches words starting with it"),
        ("workflow" = Option<String>, Query, description = "jobs of this workflow"),
        ("schedule" = Option<String>, Query, description = "jobs submitted by this schedule"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000"),
        ("cursor" = Option<String>, Query, description = "the next_cursor of the previous page, of the same sort"),
        ("sort" = Option<String>, Query, description = "newest first by: created (default), started (only jobs that have started) or finished (only jobs that have finished)")),
    responses((status = 200, body = baton_api::JobList),
        (status = 400, description = "an unknown query parameter, or an invalid state, limit, label, sort or cursor (or a cursor of another sort)", body = baton_api::ErrorBody),
        (status = 422, description = "search text with a term that has no letter or digit", body = baton_api::ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<JobList>> {
    let mut filter = job_filter(&ListFilter {
        state: q.state,
        queue: q.queue,
        kind: q.kind,
        label: q.label,
        q: q.q,
        workflow: q.workflow,
        schedule: q.schedule,
    })?;
    filter.limit = 50;
    if let Some(limit) = &q.limit {
        filter.limit = match limit.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid limit {limit:?}: expected a number from 1 to 1000"
                )));
            }
        };
    }
    if let Some(sort) = q.sort.as_deref().filter(|v| !v.is_empty()) {
        filter.sort = JobSort::parse(sort).map_err(ApiError::bad_request)?;
    }
    if let Some(cursor) = &q.cursor {
        JobCursor::parse(cursor, filter.sort).map_err(ApiError::bad_request)?;
    }
    filter.cursor = q.cursor;
    let page = s.engine.list(filter).await?;
    Ok(Json(JobList {
        jobs: page.jobs,
        next_cursor: page.next_cursor,
        total: page.total,
        total_exact: page.total_exact,
    }))
}

/// The engine's filter for the list filters of `GET /api/jobs` (also the `filter` of
/// a bulk action): an empty value is no filter; a bad state or label is a 400 naming
/// it. Its limit and cursor are the caller's to set.
pub fn job_filter(f: &ListFilter) -> ApiResult<JobFilter> {
    let mut filter = JobFilter::default();
    if let Some(states) = f.state.as_deref().filter(|v| !v.is_empty()) {
        for name in states.split(',') {
            let state = JobState::parse(name.trim()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid state {name:?}: expected one of scheduled, awaiting, queued, running, paused, stopping, crashed, completed, failed, cancelled, deleted"
                ))
            })?;
            if !filter.states.contains(&state) {
                filter.states.push(state);
            }
        }
    }
    if let Some(label) = &f.label {
        let (k, v) = label.split_once(':').ok_or_else(|| {
            ApiError::bad_request(format!("invalid label {label:?}: expected key:value"))
        })?;
        filter.label = Some((k.to_owned(), v.to_owned()));
    }
    let given = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    filter.queue = given(&f.queue);
    filter.kind = given(&f.kind);
    filter.text = given(&f.q);
    if let Some(text) = &filter.text {
        // A term the index cannot look up is refused, never answered wrongly.
        search_terms(text)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", e))?;
    }
    filter.workflow = given(&f.workflow);
    filter.schedule = given(&f.schedule);
    Ok(filter)
}

#[utoipa::path(get, operation_id = "get_job", path = "/api/jobs/{id}", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, description = "the job; a queued job that a full concurrency limit holds says so in `waiting_for`", body = baton_core::Job), (status = 404, description = "no such job", body = baton_api::ErrorBody)))]
pub async fn show(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<baton_core::Job>> {
    let mut job = s.engine.get(job_id(&id)?).await?;
    job.waiting_for = s.engine.waiting_for(&job).await?;
    Ok(Json(job))
}

/// At most this many ids in one status request.
const MAX_STATUS_IDS: usize = 1000;

#[utoipa::path(post, operation_id = "job_status", path = "/api/jobs/status", tag = "jobs", request_body = baton_api::StatusRequest,
    responses((status = 200, body = baton_api::StatusResponse),
        (status = 400, description = "more than 1000 ids, or a malformed body", body = baton_api::ErrorBody)))]
pub async fn status(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<StatusRequest>,
) -> ApiResult<Json<StatusResponse>> {
    if req.ids.len() > MAX_STATUS_IDS {
        return Err(ApiError::bad_request(format!(
            "{} ids given; at most {MAX_STATUS_IDS} are allowed",
            req.ids.len()
        )));
    }
    let mut out = StatusResponse {
        jobs: Vec::new(),
        missing: Vec::new(),
    };
    for id in req.ids {
        if JobId::parse(&id).is_err() {
            out.missing.push(id);
            continue;
        }
        match s
            .engine
            .store()
            .get(&id)
            .await
            .map_err(baton_engine::Error::from)?
        {
            Some(job) => out.jobs.push(job),
            None => out.missing.push(id),
        }
    }
    Ok(Json(out))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    timeout: Option<String>,
}

/// The longest a long-poll may wait.
const MAX_WAIT: Duration = Duration::from_secs(300);

#[utoipa::path(get, operation_id = "wait_job", path = "/api/jobs/{id}/wait", tag = "jobs",
    params(("id" = String, Path), ("timeout" = Option<String>, Query, description = "e.g. 30s; at most 5m")),
    responses((status = 200, description = "the job, terminal or not", body = baton_core::Job),
        (status = 400, description = "an invalid id or timeout, or a timeout over 5m", body = baton_api::ErrorBody),
        (status = 404, description = "no such job", body = baton_api::ErrorBody)))]
pub async fn wait(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> ApiResult<Json<baton_core::Job>> {
    let id = job_id(&id)?;
    let timeout = match &q.timeout {
        None => Duration::from_secs(30),
        Some(t) => {
            let d = baton_core::duration::parse(t)
                .map_err(|m| ApiError::bad_request(format!("invalid timeout: {m}")))?;
            if d > MAX_WAIT {
                return Err(ApiError::bad_request(format!(
                    "invalid timeout: {t:?} is longer than the limit of 5m"
                )));
            }
            d
        }
    };
    let waited = tokio::select! {
        r = tokio::time::timeout(timeout, s.engine.wait(id)) => r.ok(),
        _ = s.metrics.draining.cancelled() => None,
    };
    match waited {
        Some(job) => Ok(Json(job?)),
        // The timeout passed (or the server is stopping): the job as it is now; its
        // state says it is not done.
        None => Ok(Json(s.engine.get(id).await?)),
    }
}

#[utoipa::path(post, operation_id = "pause_job", path = "/api/jobs/{id}/pause", tag = "control", params(("id" = String, Path)),
    responses((status = 200, body = baton_core::Job), (status = 404, description = "no such job", body = baton_api::ErrorBody),
        (status = 409, description = "illegal in the job's state", body = baton_api::ErrorBody)))]
pub async fn pause(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<baton_core::Job>> {
    Ok(Json(s.engine.pause(job_id(&id)?).await?))
}

#[utoipa::path(post, operation_id = "resume_job", path = "/api/jobs/{id}/resume", tag = "control", params(("id" = String, Path)),
    responses((status = 200, body = baton_core::Job), (status = 404, description = "no such job", body = baton_api::ErrorBody),
        (status = 409, description = "illegal in the job's state", body = baton_api::ErrorBody)))]
pub async fn resume(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<baton_core::Job>> {
    Ok(Json(s.engine.resume(job_id(&id)?).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopQuery {
    #[serde(default)]
    force: Option<String>,
}

#[utoipa::path(post, operation_id = "stop_job", path = "/api/jobs/{id}/stop", tag = "control",
    params(("id" = String, Path), ("force" = Option<bool>, Query)),
    responses((status = 200, body = baton_core::Job), (status = 404, description = "no such job", body = baton_api::ErrorBody),
        (status = 409, description = "illegal in the job's state", body = baton_api::ErrorBody)))]
pub async fn stop(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<StopQuery>,
) -> ApiResult<Json<baton_core::Job>> {
    let force = flag("force", q.force.as_deref())?;
    Ok(Json(s.engine.stop(job_id(&id)?, force).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryQuery {
    #[serde(default)]
    pub(crate) from_checkpoint: Option<String>,
}

#[utoipa::path(post, operation_id = "retry_job", path = "/api/jobs/{id}/retry", tag = "control",
    params(("id" = String, Path), ("from_checkpoint" = Option<bool>, Query)),
    responses((status = 200, body = baton_core::Job), (status = 404, description = "no such job", body = baton_api::ErrorBody),
        (status = 409, description = "illegal in the job's state", body = baton_api::ErrorBody)))]
pub async fn retry(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<RetryQuery>,
) -> ApiResult<Json<baton_core::Job>> {
    let from = flag("from_checkpoint", q.from_checkpoint.as_deref())?;
    Ok(Json(s.engine.retry(job_id(&id)?, from).await?))
}

#[utoipa::path(post, operation_id = "cancel_job", path = "/api/jobs/{id}/cancel", tag = "control", params(("id" = String, Path)),
    responses((status = 200, body = baton_core::Job), (status = 404, description = "no such job", body = baton_api::ErrorBody),
        (status = 409, description = "illegal in the job's state", body = baton_api::ErrorBody)))]
pub async fn cancel(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<baton_core::Job>> {
    Ok(Json(s.engine.cancel(job_id(&id)?).await?))
}

/// `PATCH` cancels as `POST` does; a separate operation so that each has its own id.
#[utoipa::path(patch, operation_id = "cancel_job_patch", path = "/api/jobs/{id}/cancel", tag = "control", params(("id" = String, Path)),
    responses((status = 200, body = baton_core::Job), (status = 404, description = "no such job", body = baton_api::ErrorBody),
        (status = 409, description = "illegal in the job's state", body = baton_api::ErrorBody)))]
pub async fn cancel_patch(
    state: State<AppState>,
    id: ApiPath<String>,
) -> ApiResult<Json<baton_core::Job>> {
    cancel(state, id).await
}

#[utoipa::path(delete, operation_id = "delete_job", path = "/api/jobs/{id}", tag = "control", params(("id" = String, Path)),
    responses((status = 200, body = baton_core::Job), (status = 404, description = "no such job", body = baton_api::ErrorBody),
        (status = 409, description = "illegal in the job's state", body = baton_api::ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<baton_core::Job>> {
    Ok(Json(s.engine.delete(job_id(&id)?).await?))
}

#[utoipa::path(get, operation_id = "job_attempts", path = "/api/jobs/{id}/attempts", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, description = "the job's attempts, oldest first: server, times, outcome, error, exit code or signal, the checkpoint it resumed from", body = baton_api::AttemptList),
        (status = 400, description = "an invalid job id", body = baton_api::ErrorBody),
        (status = 404, description = "no such job", body = baton_api::ErrorBody)))]
pub async fn attempts(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<baton_api::AttemptList>> {
    let attempts = s.engine.attempts(job_id(&id)?).await?;
    Ok(Json(baton_api::AttemptList { attempts }))
}

#[utoipa::path(get, operation_id = "job_checkpoints", path = "/api/jobs/{id}/checkpoints", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = baton_api::CheckpointList), (status = 404, description = "no such job", body = baton_api::ErrorBody)))]
pub async fn checkpoints(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<CheckpointList>> {
    let checkpoints = s.engine.checkpoints(job_id(&id)?).await?;
    Ok(Json(CheckpointList { checkpoints }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

#[utoipa::path(get, operation_id = "job_logs", path = "/api/jobs/{id}/logs", tag = "jobs",
    params(("id" = String, Path), ("after" = Option<u64>, Query, description = "line seq"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "1 to 10000")),
    responses((status = 200, body = baton_api::LogList),
        (status = 400, description = "an invalid id, after or limit", body = baton_api::ErrorBody),
        (status = 404, description = "no such job", body = baton_api::ErrorBody)))]
pub async fn logs(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Json<baton_api::LogList>> {
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "invalid limit {limit}: expected a number from 1 to 10000"
        )));
    }
    let after = q.after.unwrap_or(0);
    let lines = s.engine.logs(job_id(&id)?, after, limit).await?;
    let next = lines.last().map_or(after, |l| l.seq);
    Ok(Json(baton_api::LogList { lines, next }))
}

#[utoipa::path(get, operation_id = "list_pipelines", path = "/api/pipelines", tag = "pipelines",
    responses((status = 200, body = baton_api::PipelineList)))]
pub async fn pipelines(State(s): State<AppState>) -> ApiResult<Json<baton_api::PipelineList>> {
    let pipelines = s.engine.pipelines().await?;
    Ok(Json(baton_api::PipelineList {
        pipelines: pipelines
            .iter()
            .map(|p| serde_json::to_value(p).unwrap_or_default())
            .collect(),
    }))
}

#[utoipa::path(get, operation_id = "get_pipeline", path = "/api/pipelines/{id}", tag = "pipelines", params(("id" = String, Path)),
    responses((status = 200, body = baton_store::Pipeline), (status = 404, description = "no such pipeline", body = baton_api::ErrorBody)))]
pub async fn pipeline(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<serde_json::Value>> {
    match s.engine.pipeline(&id).await? {
        Some(p) => Ok(Json(serde_json::to_value(p).unwrap_or_default())),
        None => Err(ApiError::not_found(format!("pipeline {id:?} not found"))),
    }
}

#[utoipa::path(put, operation_id = "put_pipeline", path = "/api/pipelines/{id}", tag = "pipelines", params(("id" = String, Path)),
    request_body = baton_core::PipelineSpec,
    responses((status = 200, description = "stored (created or replaced)", body = baton_store::Pipeline),
        (status = 422, description = "invalid pipeline, or an id that differs from the path's", body = baton_api::ErrorBody)))]
pub async fn put_pipeline(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(mut spec): ApiJson<baton_core::PipelineSpec>,
) -> ApiResult<Json<serde_json::Value>> {
    if spec.id.is_empty() {
        spec.id = id.clone();
    } else if spec.id != id {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_spec",
            format!(
                "invalid pipeline: id: {:?} differs from the path's {id:?}",
                spec.id
            ),
        ));
    }
    let stored = s.engine.put_pipeline(spec).await?;
    Ok(Json(serde_json::to_value(stored).unwrap_or_default()))
}

#[utoipa::path(delete, operation_id = "delete_pipeline", path = "/api/pipelines/{id}", tag = "pipelines", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, description = "no such pipeline", body = baton_api::ErrorBody)))]
pub async fn delete_pipeline(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<serde_json::Value>> {
    if s.engine.delete_pipeline(&id).await? {
        Ok(Json(serde_json::json!({"id": id, "deleted": true})))
    } else {
        Err(ApiError::not_found(format!("pipeline {id:?} not found")))
    }
}

/// A boolean query flag: absent, `true`/`false`, `1`/`0`.
pub fn flag(name: &str, value: Option<&str>) -> ApiResult<bool> {
    match value {
        None | Some("false") | Some("0") => Ok(false),
        Some("") | Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid {name} {other:?}: expected true or false"
        ))),
    }
}
