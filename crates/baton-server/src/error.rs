//! One error model for the whole API: every error becomes
//! `{"error": {"code", "message"}}` with its status, decided here and nowhere else.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use baton_api::{ErrorBody, ErrorDetail};
use baton_engine::ErrorCode;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The refused job's index in a batch.
    pub index: Option<usize>,
    /// The refused field of a job spec.
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            index: None,
            field: None,
        }
    }

    /// The same error, blamed on the batch's job at `index` (and its `field`).
    pub fn at(mut self, index: usize, field: Option<String>) -> Self {
        self.index = Some(index);
        self.field = field;
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl From<baton_engine::Error> for ApiError {
    fn from(e: baton_engine::Error) -> Self {
        let blame = match &e {
            baton_engine::Error::InBatch { index, field, .. } => Some((*index, field.clone())),
            _ => None,
        };
        let mut out = Self::from_engine(e);
        if let Some((index, field)) = blame
            && out.status.is_client_error()
        {
            out = out.at(index, field);
        }
        out
    }
}

impl ApiError {
    fn from_engine(e: baton_engine::Error) -> Self {
        let (status, code) = match e.code() {
            ErrorCode::InvalidSpec => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec"),
            ErrorCode::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorCode::IllegalTransition => (StatusCode::CONFLICT, "illegal_transition"),
            ErrorCode::StaleFence => (StatusCode::CONFLICT, "stale_fence"),
            ErrorCode::Conflict => (StatusCode::CONFLICT, "conflict"),
            ErrorCode::CommandNotAllowed => (StatusCode::FORBIDDEN, "command_not_allowed"),
            ErrorCode::Locked => {
                // Where the store lives and who holds it is for the operator, not for
                // whoever asked (auth may not have run yet).
                tracing::warn!(error = %e, "the store is locked by another engine");
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_locked",
                    "the store is locked by another Baton engine",
                );
            }
            ErrorCode::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ErrorCode::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            // What the client needs to know (the disk is low, and the threshold) and
            // nothing internal: the message is made for it.
            ErrorCode::InsufficientStorage => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            ErrorCode::InvalidConfig | ErrorCode::Internal => {
                // The details go to the log, not to the client.
                tracing::error!(error = %e, "internal error");
                return Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; the server log has the details",
                );
            }
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let text = r.body_text();
        match r {
            JsonRejection::JsonDataError(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", text)
            }
            JsonRejection::JsonSyntaxError(_) => {
                Self::new(StatusCode::BAD_REQUEST, "malformed_json", text)
            }
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a body with content-type application/json",
            ),
            JsonRejection::BytesRejection(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", text)
            }
            _ => Self::new(r.status(), "bad_request", text),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        if r.status().is_server_error() {
            tracing::error!(error = %r.body_text(), "path parameters do not match the route");
            return Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; the server log has the details",
            );
        }
        Self::bad_request(r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
                index: self.index,
                field: self.field,
            },
        };
        if self.code == "overloaded" {
            // The writer's queue drains in well under a second: ask for a short pause.
            let retry = [(axum::http::header::RETRY_AFTER, RETRY_AFTER_SECS)];
            return (self.status, retry, Json(body)).into_response();
        }
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// What an `overloaded` answer asks the client to wait, in seconds.
pub const RETRY_AFTER_SECS: &str = "1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_store_names_neither_its_path_nor_its_holder() {
        let locked = baton_engine::Error::Store(baton_store::Error::Owned {
            store: "/srv/secret/baton.db".into(),
            holder: "pid 4242 on build-7".into(),
        });
        let e = ApiError::from(locked);
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code, "store_locked");
        assert_eq!(e.message, "the store is locked by another Baton engine");
        let body = format!("{:?}", e);
        for secret in ["/srv/secret", "baton.db", "4242", "build-7"] {
            assert!(!body.contains(secret), "{secret} leaked: {body}");
        }
    }
}
