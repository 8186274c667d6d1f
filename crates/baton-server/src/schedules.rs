//! `/api/schedules`: create, read, replace and delete schedules, pause and resume
//! them, fire them by hand, and read their history.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use baton_api::{
    Schedule, ScheduleDeleted, ScheduleHistory, ScheduleList, ScheduleSpec, Triggered,
};
use baton_core::JobId;
use baton_engine::ScheduleFilter;
use serde::Deserialize;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::jobs::{ApiJson, ApiPath, ApiQuery, flag};

/// Schedule ids follow the rules of job ids.
fn schedule_id(id: &str) -> ApiResult<&str> {
    JobId::parse(id).map_err(|m| ApiError::bad_request(format!("invalid schedule id: {m}")))?;
    Ok(id)
}

/// `limit` from 1 to 1000.
pub(crate) fn limit(value: Option<&str>, default: usize) -> ApiResult<usize> {
    match value {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "invalid limit {v:?}: expected a number from 1 to 1000"
            ))),
        },
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    enabled: Option<String>,
    q: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[utoipa::path(get, operation_id = "list_schedules", path = "/api/schedules", tag = "schedules",
    params(("enabled" = Option<bool>, Query, description = "only enabled (true) or paused (false) schedules"),
        ("q" = Option<String>, Query, description = "text in the id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = baton_api::ScheduleList),
        (status = 400, description = "an unknown query parameter, or an invalid enabled or limit", body = baton_api::ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<ScheduleList>> {
    let enabled = match q.enabled.as_deref() {
        None | Some("") => None,
        Some(v) => Some(flag("enabled", Some(v))?),
    };
    let filter = ScheduleFilter {
        enabled,
        text: q.q.filter(|v| !v.is_empty()),
        limit: limit(q.limit.as_deref(), 50)?,
        cursor: q.cursor.filter(|v| !v.is_empty()),
    };
    let page = s.engine.schedules(filter).await?;
    Ok(Json(ScheduleList {
        schedules: page.schedules,
        next_cursor: page.next_cursor,
        total: page.total,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewQuery {
    count: Option<String>,
}

#[utoipa::path(post, operation_id = "preview_schedule", path = "/api/schedule-preview", tag = "schedules", request_body = baton_core::ScheduleSpec,
    params(("count" = Option<u32>, Query, minimum = 1, maximum = 100, description = "how many runs, 1 to 100 (default 5)")),
    responses((status = 200, description = "the next runs, were the schedule created now; nothing is stored", body = baton_api::SchedulePreview),
        (status = 400, description = "an invalid count", body = baton_api::ErrorBody),
        (status = 422, description = "invalid schedule, as a create would say", body = baton_api::ErrorBody)))]
pub async fn preview(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PreviewQuery>,
    ApiJson(spec): ApiJson<ScheduleSpec>,
) -> ApiResult<Json<baton_api::SchedulePreview>> {
    let count = match q.count.as_deref() {
        None => 5,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid count {v:?}: expected a number from 1 to 100"
                )));
            }
        },
    };
    let runs = s.engine.preview_schedule(spec, count).await?;
    Ok(Json(baton_api::SchedulePreview {
        runs: runs.into_iter().map(baton_core::time::to_rfc3339).collect(),
    }))
}

#[utoipa::path(post, operation_id = "create_schedule", path = "/api/schedules", tag = "schedules", request_body = baton_core::ScheduleSpec,
    responses((status = 201, description = "created", body = baton_core::Schedule),
        (status = 409, description = "a schedule with this id exists (PUT replaces it)", body = baton_api::ErrorBody),
        (status = 422, description = "invalid schedule: bad cron, unknown time zone, zero interval, a job that cannot run here", body = baton_api::ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    ApiJson(spec): ApiJson<ScheduleSpec>,
) -> ApiResult<Response> {
    let schedule = s.engine.create_schedule(spec).await?;
    Ok((StatusCode::CREATED, Json(schedule)).into_response())
}

#[utoipa::path(get, operation_id = "get_schedule", path = "/api/schedules/{id}", tag = "schedules", params(("id" = String, Path)),
    responses((status = 200, body = baton_core::Schedule), (status = 404, description = "no such schedule", body = baton_api::ErrorBody)))]
pub async fn show(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Schedule>> {
    Ok(Json(s.engine.schedule(schedule_id(&id)?).await?))
}

#[utoipa::path(put, operation_id = "put_schedule", path = "/api/schedules/{id}", tag = "schedules", params(("id" = String, Path)),
    request_body = baton_core::ScheduleSpec,
    responses((status = 201, description = "created", body = baton_core::Schedule),
        (status = 200, description = "replaced; its history, runs and (when its timing is the same) next run stay", body = baton_core::Schedule),
        (status = 422, description = "invalid schedule, or an id that differs from the path's", body = baton_api::ErrorBody)))]
pub async fn put(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(mut spec): ApiJson<ScheduleSpec>,
) -> ApiResult<Response> {
    schedule_id(&id)?;
    match &spec.id {
        None => spec.id = Some(id),
        Some(given) if *given == id => {}
        Some(given) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_spec",
                format!("invalid schedule: id: {given:?} differs from the path's {id:?}"),
            ));
        }
    }
    let put = s.engine.put_schedule(spec).await?;
    let status = if put.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(put.schedule)).into_response())
}

#[utoipa::path(delete, operation_id = "delete_schedule", path = "/api/schedules/{id}", tag = "schedules", params(("id" = String, Path)),
    responses((status = 200, description = "deleted with its history; its jobs stay", body = baton_api::ScheduleDeleted),
        (status = 404, description = "no such schedule", body = baton_api::ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ScheduleDeleted>> {
    let gone = s.engine.delete_schedule(schedule_id(&id)?).await?;
    Ok(Json(ScheduleDeleted {
        id: gone.id,
        deleted: true,
    }))
}

#[utoipa::path(post, operation_id = "trigger_schedule", path = "/api/schedules/{id}/trigger", tag = "schedules", params(("id" = String, Path)),
    responses((status = 201, description = "fired; it submitted a job", body = baton_api::Triggered),
        (status = 200, description = "fired; the overlap policy skipped the job", body = baton_api::Triggered),
        (status = 404, description = "no such schedule", body = baton_api::ErrorBody), (status = 409, description = "its job's unique_key is held by another job", body = baton_api::ErrorBody),
        (status = 422, description = "its job cannot be made", body = baton_api::ErrorBody)))]
pub async fn trigger(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let mut fired = s.engine.trigger_schedule(schedule_id(&id)?).await?;
    let fire = fired.records.pop().ok_or_else(|| {
        ApiError::from(baton_engine::Error::Config(
            "a fire without a record".into(),
        ))
    })?;
    let job = fired.jobs.pop();
    let status = if job.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = Triggered {
        fire,
        job,
        schedule: fired.schedule,
    };
    Ok((status, Json(body)).into_response())
}

#[utoipa::path(post, operation_id = "pause_schedule", path = "/api/schedules/{id}/pause", tag = "schedules", params(("id" = String, Path)),
    responses((status = 200, description = "paused: it fires only by hand", body = baton_core::Schedule),
        (status = 404, description = "no such schedule", body = baton_api::ErrorBody)))]
pub async fn pause(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Schedule>> {
    Ok(Json(s.engine.pause_schedule(schedule_id(&id)?).await?))
}

#[utoipa::path(post, operation_id = "resume_schedule", path = "/api/schedules/{id}/resume", tag = "schedules", params(("id" = String, Path)),
    responses((status = 200, description = "enabled; runs missed while paused are not made up", body = baton_core::Schedule),
        (status = 404, description = "no such schedule", body = baton_api::ErrorBody)))]
pub async fn resume(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Schedule>> {
    Ok(Json(s.engine.resume_schedule(schedule_id(&id)?).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

#[utoipa::path(get, operation_id = "schedule_history", path = "/api/schedules/{id}/history", tag = "schedules",
    params(("id" = String, Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = baton_api::ScheduleHistory),
        (status = 400, description = "an invalid id, limit or cursor", body = baton_api::ErrorBody),
        (status = 404, description = "no such schedule", body = baton_api::ErrorBody)))]
pub async fn history(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<ScheduleHistory>> {
    let limit = limit(q.limit.as_deref(), 50)?;
    let before = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            c.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid cursor {c:?}")))?,
        ),
    };
    let page = s
        .engine
        .schedule_history(schedule_id(&id)?, before, limit)
        .await?;
    Ok(Json(ScheduleHistory {
        fires: page.fires,
        next_cursor: page.next_cursor,
    }))
}
