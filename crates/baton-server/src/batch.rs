//! `POST /api/jobs/batch`: many jobs in one store write, all or none.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use baton_api::{BatchRequest, BatchResponse, MAX_BATCH_JOBS};

use crate::AppState;
use crate::auth::{Caller, SubmitQuota};
use crate::error::{ApiError, ApiResult};
use crate::json::ApiJson;

/// Submit many jobs in one write, all or none.
///
/// The submit rate limit (429) counts every job of the batch; a batch with more jobs
/// than the limit's burst is refused with 429 whatever the wait, and must be split.
#[utoipa::path(post, operation_id = "submit_batch", path = "/api/jobs/batch", tag = "jobs", request_body = baton_api::BatchRequest,
    responses((status = 201, description = "stored in one write: the jobs in the order given, and for each whether this request created it (false: a job with its client id existed, and is answered as it is)", body = baton_api::BatchResponse),
        (status = 200, description = "every job existed already (each client id was taken); nothing was written", body = baton_api::BatchResponse),
        (status = 400, description = "no jobs, more than 10000, or a malformed body", body = baton_api::ErrorBody),
        (status = 403, description = "the token's role may not submit; a token narrowed to queues and a job of another queue (index names it); or the commands policy refuses a program of a job (code command_not_allowed, index names it); nothing is stored", body = baton_api::ErrorBody),
        (status = 409, description = "a job's unique_key is held by another job (unique_policy reject); nothing is stored", body = baton_api::ErrorBody),
        (status = 422, description = "a job is invalid: the message, `index` and `field` name it (`jobs[3].command: ...`); a repeated id within the batch, a dependency on a later job of the batch or on no job; nothing is stored", body = baton_api::ErrorBody),
        (status = 507, description = "the store's disk is low (under `disk_free_below`): code insufficient_storage, the message names the disk's free space and the threshold; nothing is stored", body = baton_api::ErrorBody)))]
pub async fn submit_batch(
    State(s): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
    quota: Option<axum::Extension<SubmitQuota>>,
    ApiJson(req): ApiJson<BatchRequest>,
) -> ApiResult<Response> {
    let n = req.jobs.len();
    if n == 0 {
        return Err(ApiError::bad_request(
            "jobs: the batch is empty; give from 1 to 10000 job specs",
        ));
    }
    if n > MAX_BATCH_JOBS {
        return Err(ApiError::bad_request(format!(
            "jobs: {n} job specs given; a batch holds at most {MAX_BATCH_JOBS}"
        )));
    }
    if let Some(refused) = s.auth.charge(quota.as_ref().map(|q| &q.0), n) {
        return Ok(refused);
    }
    if let Some(axum::Extension(caller)) = &caller {
        let mut pipelines = HashMap::new();
        for (index, spec) in req.jobs.iter().enumerate() {
            crate::jobs::check_scope(&s, caller, spec, &mut pipelines)
                .await
                .map_err(|e| {
                    let message = format!("jobs[{index}]: {}", e.message);
                    ApiError::new(e.status, e.code, message).at(index, None)
                })?;
        }
    }
    let submitted = s.engine.submit_batch(req.jobs).await?;
    let status = if submitted.iter().any(|j| j.created) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut out = BatchResponse {
        jobs: Vec::with_capacity(n),
        created: Vec::with_capacity(n),
    };
    for j in submitted {
        out.created.push(j.created);
        out.jobs.push(j.job);
    }
    Ok((status, Json(out)).into_response())
}
