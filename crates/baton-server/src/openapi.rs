//! The OpenAPI document, generated from the handlers and the API types.
//!
//! Where each status comes from: a handler's annotation lists what that operation
//! answers by itself (201, 404 for an unknown id, 409 for an illegal transition, 422
//! for an invalid spec). What operations answer because they share a layer or an
//! extractor is added here, once, by [`CommonResponses`], from the same rules those
//! layers apply, so that a new handler gets them without copying:
//!
//! - 400: a malformed path segment, query string, header or JSON body (an operation
//!   with parameters or a body);
//! - 408, 413, 415, 422: a body that did not arrive within `body_timeout`, too
//!   large, not sent as JSON, or not of the documented shape (an operation with a
//!   body);
//! - 401 when auth is on and the token is missing or wrong (an operation that needs a
//!   role, [`auth::required_role`]); 403 when the caller's role is too low, or the
//!   request's `Host` or `Origin` is not allowed (every operation but the probes,
//!   `crate::guard`);
//! - 429 with `Retry-After`: the submit rate limit ([`auth::rate_limited`]), and too
//!   many failed authentications from the client (an operation that needs a role);
//! - 500: an internal error (an operation that reaches the engine);
//! - 503: the store is locked or unavailable, the engine is overloaded, or too many
//!   requests are in flight (every operation), with `Retry-After` when a retry helps.
//!
//! Every error body is the shared `ErrorBody` schema, `{"error": {"code", "message"}}`.

use axum::http::Method;
use baton_core::JobId;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, Type};
use utoipa::openapi::{
    Components, Content, Header, OpenApi as Document, Ref, RefOr, ResponseBuilder,
};
use utoipa::{Modify, OpenApi};

use crate::auth;
use crate::{batch, bulk, events, jobs, meta, resources, schedules, workers, workflows};

#[derive(OpenApi)]
#[openapi(
    info(title = "Baton", description = "One engine for background jobs: submit, control and follow jobs."),
    paths(
        jobs::submit, batch::submit_batch, jobs::list, jobs::show, jobs::status, jobs::wait, jobs::pause, jobs::resume,
        jobs::stop, jobs::retry, jobs::cancel, jobs::cancel_patch, jobs::delete, jobs::attempts, jobs::checkpoints, jobs::logs, bulk::bulk,
        jobs::pipelines, jobs::pipeline, jobs::put_pipeline, jobs::delete_pipeline,
        events::job_events, events::all_events,
        workflows::submit, workflows::list, workflows::show, workflows::pause, workflows::resume, workflows::retry,
        workflows::cancel, workflows::dependencies, workflows::dependents,
        workflows::pause_queue, workflows::resume_queue,
        schedules::list, schedules::preview, schedules::create, schedules::show, schedules::put, schedules::delete,
        schedules::trigger, schedules::pause, schedules::resume, schedules::history,
        meta::whoami, meta::throughput, meta::stats, meta::servers, workers::list, meta::queues, resources::resources, meta::healthz, meta::readyz, meta::metrics,
    ),
    components(schemas(baton_api::WsRequest, baton_api::WsMessage, baton_api::ErrorBody)),
    modifiers(&CommonResponses),
    tags((name = "jobs"), (name = "control"), (name = "events"), (name = "pipelines"), (name = "workflows"), (name = "schedules"), (name = "meta"))
)]
struct Doc;

pub fn document() -> String {
    Doc::openapi().to_json().unwrap_or_else(|_| "{}".into())
}

/// A shared error response: its status, component name, description, and the
/// header it may carry.
struct Common {
    status: &'static str,
    name: &'static str,
    description: &'static str,
    header: Option<(&'static str, &'static str)>,
}

const COMMON: [Common; 10] = [
    Common {
        status: "400",
        name: "BadRequest",
        description: "malformed request: an invalid id or path segment, an unknown or invalid query parameter or header, a body that is not valid JSON or repeats a key",
        header: None,
    },
    Common {
        status: "401",
        name: "Unauthorized",
        description: "auth is on and the request has no valid token (Authorization: Bearer, or ?token=)",
        header: Some(("WWW-Authenticate", "Bearer")),
    },
    Common {
        status: "403",
        name: "Forbidden",
        description: "the token's role may not do this (viewer reads; operator submits and controls; admin deletes and manages schedules and pipelines), or the request's Host is not allowed (allowed_hosts), or its Origin may not change state or open the WebSocket (cors_origins)",
        header: None,
    },
    Common {
        status: "408",
        name: "RequestTimeout",
        description: "the body did not arrive within the server's body_timeout",
        header: None,
    },
    Common {
        status: "413",
        name: "PayloadTooLarge",
        description: "the body is larger than the server's body_limit_bytes",
        header: None,
    },
    Common {
        status: "415",
        name: "UnsupportedMediaType",
        description: "the body was not sent with content-type application/json",
        header: None,
    },
    Common {
        status: "422",
        name: "InvalidBody",
        description: "the JSON body does not have the documented shape",
        header: None,
    },
    Common {
        status: "429",
        name: "RateLimited",
        description: "the submit rate limit (submit_rate) is reached, or the client failed to authenticate too often; retry after the given seconds",
        header: Some(("Retry-After", "seconds to wait")),
    },
    Common {
        status: "500",
        name: "Internal",
        description: "an internal error; the server log has the details",
        header: None,
    },
    Common {
        status: "503",
        name: "Unavailable",
        description: "the store is locked or unavailable, the engine is overloaded, too many requests are in flight, or the server is stopping; retry later (after Retry-After seconds when given)",
        header: Some(("Retry-After", "seconds to wait")),
    },
];

/// Adds the responses that come from shared layers and extractors (see the module
/// documentation) to every operation they apply to; a status a handler documents
/// itself keeps the handler's description.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        for c in &COMMON {
            let mut response = ResponseBuilder::new().description(c.description).content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            );
            if let Some((name, description)) = c.header {
                let mut header = Header::new(Object::with_type(Type::String));
                header.description = Some(description.into());
                response = response.header(name, header);
            }
            components
                .responses
                .insert(c.name.into(), RefOr::T(response.build()));
        }
        inline_flattened(components, "Pipeline");
        add_links(doc);
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in operations(item) {
                if ["/api/jobs/", "/api/workflows/", "/api/schedules/"]
                    .iter()
                    .any(|p| path.starts_with(p))
                {
                    describe_id(op);
                }
                let statuses = common_statuses(&method, path, op);
                for c in COMMON.iter().filter(|c| statuses.contains(&c.status)) {
                    op.responses
                        .responses
                        .entry(c.status.into())
                        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(c.name)));
                }
            }
        }
    }
}

/// Writes out whole a schema that utoipa made an `allOf` of a flattened type and the
/// fields beside it. The flattened type refuses unknown fields
/// (`additionalProperties: false`), so no value could match both parts of the
/// `allOf`: a stored pipeline (its spec, `created_at` and `updated_at`) is one object
/// with all three.
fn inline_flattened(components: &mut Components, name: &str) {
    let Some(RefOr::T(Schema::AllOf(all))) = components.schemas.get(name) else {
        return;
    };
    let mut merged: Option<Object> = None;
    for part in &all.items {
        let object = match part {
            RefOr::Ref(r) => {
                let target = r.ref_location.rsplit('/').next().unwrap_or_default();
                match components.schemas.get(target) {
                    Some(RefOr::T(Schema::Object(o))) => o.clone(),
                    _ => return,
                }
            }
            RefOr::T(Schema::Object(o)) => o.clone(),
            _ => return,
        };
        merged = Some(match merged {
            None => object,
            Some(mut m) => {
                m.properties.extend(object.properties);
                m.required.extend(object.required);
                m
            }
        });
    }
    if let Some(mut m) = merged {
        m.description = all.description.clone();
        components
            .schemas
            .insert(name.to_owned(), RefOr::T(Schema::Object(m)));
    }
}

/// The shared statuses an operation can answer, by the rules of the layers and
/// extractors every handler goes through.
fn common_statuses(method: &Method, path: &str, op: &Operation) -> Vec<&'static str> {
    let mut out = Vec::new();
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let has_body = op.request_body.is_some();
    if has_params || has_body {
        out.push("400");
    }
    if has_body {
        out.extend(["408", "413", "415", "422"]);
    }
    if auth::required_role(method, path).is_some() {
        // A role too low, or a Host or Origin refused (crate::guard, which leaves the
        // probes alone as auth does); too many failed authentications.
        out.extend(["401", "403", "429"]);
    }
    if !matches!(path, "/healthz" | "/readyz") {
        out.push("500");
    }
    out.push("503");
    out
}

/// Operations whose answer names a resource that other operations take by id: the
/// source's operation id, the targets' path, and where the id is in the answer.
const LINKS: [(&str, &str, &str); 5] = [
    ("submit_job", "/api/jobs/{id}", "$response.body#/id"),
    (
        "submit_workflow",
        "/api/workflows/{id}",
        "$response.body#/id",
    ),
    (
        "create_schedule",
        "/api/schedules/{id}",
        "$response.body#/id",
    ),
    ("put_schedule", "/api/schedules/{id}", "$response.body#/id"),
    ("put_pipeline", "/api/pipelines/{id}", "$request.path.id"),
];

/// OpenAPI links from each source's successful answers to every operation under the
/// target path, so that a client (and the fuzz's stateful phase) can follow them.
fn add_links(doc: &mut Document) {
    let mut targets: Vec<(&str, String)> = Vec::new();
    for (path, item) in doc.paths.paths.iter_mut() {
        for (_, op) in operations(item) {
            for (_, prefix, _) in LINKS {
                let under = path.strip_prefix(prefix);
                if under.is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                    && let Some(id) = &op.operation_id
                {
                    targets.push((prefix, id.clone()));
                }
            }
        }
    }
    for item in doc.paths.paths.values_mut() {
        for (_, op) in operations(item) {
            let Some((_, prefix, value)) = LINKS
                .iter()
                .find(|(source, _, _)| op.operation_id.as_deref() == Some(*source))
            else {
                continue;
            };
            for (status, response) in op.responses.responses.iter_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                if !status.starts_with('2') {
                    continue;
                }
                for (_, target) in targets.iter().filter(|(p, _)| p == prefix) {
                    let link = LinkBuilder::new()
                        .operation_id(target.as_str())
                        .parameter("id", *value)
                        .build();
                    response.links.insert(target.clone(), RefOr::T(link));
                }
            }
        }
    }
}

/// Job, workflow and schedule ids in paths follow `JobId::parse`: a 400 answers
/// anything else, and saying so lets clients (and the fuzz) send real ids.
fn describe_id(op: &mut Operation) {
    for p in op.parameters.iter_mut().flatten() {
        if let RefOr::T(p) = p
            && p.name == "id"
            && p.parameter_in == ParameterIn::Path
        {
            let schema = ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(JobId::MAX_LEN))
                .pattern(Some("^[A-Za-z0-9._:-]+$"))
                .build();
            p.schema = Some(RefOr::T(schema.into()));
            p.description
                .get_or_insert_with(|| "letters, digits, '.', '_', ':' and '-'".into());
        }
    }
}

fn operations(item: &mut PathItem) -> Vec<(Method, &mut Operation)> {
    [
        (Method::GET, item.get.as_mut()),
        (Method::PUT, item.put.as_mut()),
        (Method::POST, item.post.as_mut()),
        (Method::DELETE, item.delete.as_mut()),
        (Method::PATCH, item.patch.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.map(|op| (m, op)))
    .collect()
}
