//! `/api/workflows`: submit a DAG of jobs, read its graph, control it as a whole;
//! `/api/queues/{name}/pause` and `/resume`; a job's dependencies and dependents.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use baton_api::{
    LinkList, QueueInfo, WorkflowGraph, WorkflowList, WorkflowSpec, WorkflowSubmitted,
};
use baton_core::JobId;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::jobs::{ApiJson, ApiPath, ApiQuery, RetryQuery, flag, job_id};

fn workflow_id(id: &str) -> ApiResult<&str> {
    JobId::parse(id).map_err(|m| ApiError::bad_request(format!("invalid workflow id: {m}")))?;
    Ok(id)
}

#[utoipa::path(post, operation_id = "submit_workflow", path = "/api/workflows", tag = "workflows", request_body = baton_api::WorkflowSpec,
    responses((status = 201, description = "created", body = baton_api::WorkflowSubmitted),
        (status = 200, description = "a workflow with this id exists", body = baton_api::WorkflowSubmitted),
        (status = 403, description = "the token's role may not submit, or the server's commands policy does not allow a program one of its jobs would run (code command_not_allowed); nothing is stored", body = baton_api::ErrorBody),
        (status = 422, description = "invalid spec, a cycle or an unknown dependency", body = baton_api::ErrorBody),
        (status = 409, description = "a job id or unique key is taken", body = baton_api::ErrorBody),
        (status = 507, description = "the store's disk is low (under `disk_free_below`): code insufficient_storage, the message names the disk's free space and the threshold; nothing is stored", body = baton_api::ErrorBody)))]
pub async fn submit(
    State(s): State<AppState>,
    ApiJson(spec): ApiJson<WorkflowSpec>,
) -> ApiResult<Response> {
    let out = s.engine.submit_workflow(spec).await?;
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = WorkflowSubmitted {
        id: out.id,
        jobs: out.names,
    };
    Ok((status, Json(body)).into_response())
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

#[utoipa::path(get, operation_id = "list_workflows", path = "/api/workflows", tag = "workflows",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000 (50 by default)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, description = "workflows, newest first, each with its jobs counted by state", body = baton_api::WorkflowList),
        (status = 400, description = "an unknown query parameter, or an invalid limit or cursor", body = baton_api::ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<WorkflowList>> {
    let cursor = q.cursor.filter(|c| !c.is_empty());
    // The store's cursor is `created_at:id`, as it wrote it.
    if let Some(c) = &cursor
        && c.split_once(':')
            .is_none_or(|(at, _)| at.parse::<i64>().is_err())
    {
        return Err(ApiError::bad_request(format!("invalid cursor {c:?}")));
    }
    let filter = baton_store::WorkflowFilter {
        limit: crate::schedules::limit(q.limit.as_deref(), 50)?,
        cursor,
    };
    let page = s
        .engine
        .store()
        .workflows(filter)
        .await
        .map_err(baton_engine::Error::from)?;
    Ok(Json(WorkflowList {
        workflows: page.workflows,
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(get, operation_id = "get_workflow", path = "/api/workflows/{id}", tag = "workflows", params(("id" = String, Path)),
    responses((status = 200, body = baton_api::WorkflowGraph), (status = 404, description = "no such workflow", body = baton_api::ErrorBody)))]
pub async fn show(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<WorkflowGraph>> {
    Ok(Json(s.engine.workflow(workflow_id(&id)?).await?))
}

#[utoipa::path(post, operation_id = "pause_workflow", path = "/api/workflows/{id}/pause", tag = "workflows", params(("id" = String, Path)),
    responses((status = 200, body = baton_api::WorkflowGraph), (status = 404, description = "no such workflow", body = baton_api::ErrorBody),
        (status = 409, description = "illegal in the workflow's state", body = baton_api::ErrorBody)))]
pub async fn pause(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<WorkflowGraph>> {
    Ok(Json(s.engine.pause_workflow(workflow_id(&id)?).await?))
}

#[utoipa::path(post, operation_id = "resume_workflow", path = "/api/workflows/{id}/resume", tag = "workflows", params(("id" = String, Path)),
    responses((status = 200, body = baton_api::WorkflowGraph), (status = 404, description = "no such workflow", body = baton_api::ErrorBody),
        (status = 409, description = "illegal in the workflow's state", body = baton_api::ErrorBody)))]
pub async fn resume(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<WorkflowGraph>> {
    Ok(Json(s.engine.resume_workflow(workflow_id(&id)?).await?))
}

#[utoipa::path(post, operation_id = "retry_workflow", path = "/api/workflows/{id}/retry", tag = "workflows",
    params(("id" = String, Path), ("from_checkpoint" = Option<bool>, Query)),
    responses((status = 200, body = baton_api::WorkflowGraph), (status = 404, description = "no such workflow", body = baton_api::ErrorBody),
        (status = 409, description = "illegal in the workflow's state", body = baton_api::ErrorBody)))]
pub async fn retry(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<RetryQuery>,
) -> ApiResult<Json<WorkflowGraph>> {
    let from = flag("from_checkpoint", q.from_checkpoint.as_deref())?;
    Ok(Json(
        s.engine.retry_workflow(workflow_id(&id)?, from).await?,
    ))
}

#[utoipa::path(post, operation_id = "cancel_workflow", path = "/api/workflows/{id}/cancel", tag = "workflows", params(("id" = String, Path)),
    responses((status = 200, body = baton_api::WorkflowGraph), (status = 404, description = "no such workflow", body = baton_api::ErrorBody),
        (status = 409, description = "illegal in the workflow's state", body = baton_api::ErrorBody)))]
pub async fn cancel(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<WorkflowGraph>> {
    Ok(Json(s.engine.cancel_workflow(workflow_id(&id)?).await?))
}

#[utoipa::path(get, operation_id = "job_dependencies", path = "/api/jobs/{id}/dependencies", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = baton_api::LinkList), (status = 404, description = "no such job", body = baton_api::ErrorBody)))]
pub async fn dependencies(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<LinkList>> {
    let jobs = s.engine.dependencies(job_id(&id)?).await?;
    Ok(Json(LinkList { jobs }))
}

#[utoipa::path(get, operation_id = "job_dependents", path = "/api/jobs/{id}/dependents", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = baton_api::LinkList), (status = 404, description = "no such job", body = baton_api::ErrorBody)))]
pub async fn dependents(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<LinkList>> {
    let jobs = s.engine.dependents(job_id(&id)?).await?;
    Ok(Json(LinkList { jobs }))
}

#[utoipa::path(post, operation_id = "pause_queue", path = "/api/queues/{name}/pause", tag = "meta", params(("name" = String, Path)),
    responses((status = 200, body = baton_api::QueueInfo), (status = 404, description = "no such queue", body = baton_api::ErrorBody)))]
pub async fn pause_queue(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<QueueInfo>> {
    set_queue_paused(&s, &name, true).await
}

#[utoipa::path(post, operation_id = "resume_queue", path = "/api/queues/{name}/resume", tag = "meta", params(("name" = String, Path)),
    responses((status = 200, body = baton_api::QueueInfo), (status = 404, description = "no such queue", body = baton_api::ErrorBody)))]
pub async fn resume_queue(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<QueueInfo>> {
    set_queue_paused(&s, &name, false).await
}

async fn set_queue_paused(s: &AppState, name: &str, paused: bool) -> ApiResult<Json<QueueInfo>> {
    if !s.engine.queue_states().iter().any(|q| q.name == name) {
        let known: Vec<String> = s
            .engine
            .queue_states()
            .into_iter()
            .map(|q| q.name)
            .collect();
        return Err(ApiError::not_found(format!(
            "queue {name:?} not found (configured: {})",
            known.join(", ")
        )));
    }
    let q = if paused {
        s.engine.pause_queue(name).await?
    } else {
        s.engine.resume_queue(name).await?
    };
    let counts = s
        .engine
        .store()
        .counts()
        .await
        .map_err(baton_engine::Error::from)?;
    let counts: BTreeMap<String, u64> = counts
        .rows
        .into_iter()
        .filter(|(queue, _, _)| queue == name)
        .map(|(_, state, n)| (state.as_str().to_owned(), n))
        .collect();
    Ok(Json(QueueInfo {
        name: q.name,
        concurrency: Some(q.concurrency),
        running: q.running,
        counts,
        paused: q.paused,
        heavy: q.heavy,
        held: q.held,
    }))
}
