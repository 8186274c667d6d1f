//! The OpenAPI document, generated from the handlers and the API types.

use utoipa::OpenApi;

use crate::{events, jobs, meta, resources, schedules, workflows};

#[derive(OpenApi)]
#[openapi(
    info(title = "Baton", description = "One engine for background jobs: submit, control and follow jobs."),
    paths(
        jobs::submit, jobs::list, jobs::show, jobs::status, jobs::wait, jobs::pause, jobs::resume,
        jobs::stop, jobs::retry, jobs::cancel, jobs::delete, jobs::checkpoints, jobs::logs,
        jobs::pipelines, jobs::pipeline, jobs::put_pipeline, jobs::delete_pipeline,
        events::job_events, events::all_events,
        workflows::submit, workflows::show, workflows::pause, workflows::resume, workflows::retry,
        workflows::cancel, workflows::dependencies, workflows::dependents,
        workflows::pause_queue, workflows::resume_queue,
        schedules::list, schedules::create, schedules::show, schedules::put, schedules::delete,
        schedules::trigger, schedules::pause, schedules::resume, schedules::history,
        meta::stats, meta::servers, meta::queues, resources::resources, meta::healthz, meta::readyz, meta::metrics,
    ),
    components(schemas(baton_api::WsRequest, baton_api::WsMessage, baton_api::ErrorBody)),
    tags((name = "jobs"), (name = "control"), (name = "events"), (name = "pipelines"), (name = "workflows"), (name = "schedules"), (name = "meta"))
)]
struct Doc;

pub fn document() -> String {
    Doc::openapi().to_json().unwrap_or_else(|_| "{}".into())
}
