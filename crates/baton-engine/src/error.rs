use baton_core::{SpecError, State};

/// What an engine call can fail with. [`Error::code`] maps each to a closed set of codes
/// that the HTTP layer turns into status codes in one place.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("invalid job spec: kind: no handler is registered for {kind:?} (registered: {known})")]
    UnknownKind { kind: String, known: String },
    #[error("invalid job spec: queue: unknown queue {queue:?} (configured: {known})")]
    UnknownQueue { queue: String, known: String },
    #[error("cannot {action} job {id:?}: it is {state}")]
    Illegal {
        id: String,
        action: &'static str,
        state: State,
    },
    #[error(transparent)]
    Store(baton_store::Error),
    /// Too much work is waiting to be written: nothing was submitted; retry shortly.
    #[error("the engine is overloaded ({queued} writes are queued); retry shortly")]
    Overloaded { queued: usize },
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("invalid engine configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Schedule(#[from] baton_core::ScheduleError),
    #[error("schedule {0:?} not found")]
    ScheduleNotFound(String),
    #[error("schedule {0:?} exists already; put it to replace it")]
    ScheduleExists(String),
    /// The commands policy refuses a program the job would run.
    #[error("{0}")]
    CommandNotAllowed(String),
    /// The store's disk is low: no new job is accepted (the message says how low and
    /// the threshold).
    #[error("insufficient storage: {0}")]
    InsufficientStorage(String),
    /// A worker's hello or request is not one the engine can take.
    #[error("invalid worker: {0}")]
    Worker(String),
    /// One job of a batch was refused, so none was stored: its index in the batch,
    /// the field to blame when one is, and why.
    #[error("{}", in_batch_message(*index, field.as_deref(), source))]
    InBatch {
        index: usize,
        field: Option<String>,
        source: Box<Error>,
    },
}

/// `invalid job spec: jobs[3].command: ...` for a field, `jobs[3]: ...` otherwise.
fn in_batch_message(index: usize, field: Option<&str>, source: &Error) -> String {
    let text = source.to_string();
    match field {
        Some(field) => {
            let reason = text
                .strip_prefix("invalid job spec: ")
                .and_then(|t| t.strip_prefix(field))
                .and_then(|t| t.strip_prefix(": "))
                .unwrap_or(&text);
            format!("invalid job spec: jobs[{index}].{field}: {reason}")
        }
        None => format!("jobs[{index}]: {text}"),
    }
}

impl Error {
    /// `e` as the refusal of the batch's job at `index`, with the field to blame.
    pub fn in_batch(index: usize, e: Error) -> Error {
        let field = match &e {
            Error::Spec(s) => Some(s.field.clone()),
            Error::UnknownKind { .. } => Some("kind".into()),
            Error::UnknownQueue { .. } => Some("queue".into()),
            Error::Store(baton_store::Error::UnknownDependency { .. }) => Some("depends_on".into()),
            _ => None,
        };
        Error::InBatch {
            index,
            field,
            source: Box::new(e),
        }
    }

    /// The job a store refusal names, when it names one.
    pub fn job_id(&self) -> Option<&str> {
        match self {
            Error::Store(
                baton_store::Error::UnknownDependency { id, .. }
                | baton_store::Error::Transition { id, .. },
            ) => Some(id),
            _ => None,
        }
    }
}

impl From<baton_store::Error> for Error {
    fn from(e: baton_store::Error) -> Self {
        match e {
            baton_store::Error::Overloaded { queued } => Error::Overloaded { queued },
            other => Error::Store(other),
        }
    }
}

/// The closed set of error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidSpec,
    NotFound,
    IllegalTransition,
    StaleFence,
    Locked,
    Unavailable,
    InvalidConfig,
    Internal,
    /// The request conflicts with what the store holds (a held unique key, a job id
    /// or a schedule id taken).
    Conflict,
    /// Too much work is waiting: retry later (HTTP 503 with `Retry-After`).
    Overloaded,
    /// The server's commands policy does not allow a program the job would run.
    CommandNotAllowed,
    /// The store's disk is low: nothing new is stored (HTTP 507).
    InsufficientStorage,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidSpec => "invalid_spec",
            ErrorCode::NotFound => "not_found",
            ErrorCode::IllegalTransition => "illegal_transition",
            ErrorCode::StaleFence => "stale_fence",
            ErrorCode::Locked => "store_locked",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::Internal => "internal",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::CommandNotAllowed => "command_not_allowed",
            ErrorCode::InsufficientStorage => "insufficient_storage",
        }
    }
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        use baton_store::Error as S;
        match self {
            Error::Spec(_)
            | Error::UnknownKind { .. }
            | Error::UnknownQueue { .. }
            | Error::Worker(_) => ErrorCode::InvalidSpec,
            Error::Illegal { .. } => ErrorCode::IllegalTransition,
            Error::ShuttingDown => ErrorCode::Unavailable,
            Error::Overloaded { .. } => ErrorCode::Overloaded,
            Error::Config(_) => ErrorCode::InvalidConfig,
            Error::Schedule(_) => ErrorCode::InvalidSpec,
            Error::ScheduleNotFound(_) => ErrorCode::NotFound,
            Error::ScheduleExists(_) => ErrorCode::Conflict,
            Error::CommandNotAllowed(_) => ErrorCode::CommandNotAllowed,
            Error::InsufficientStorage(_) => ErrorCode::InsufficientStorage,
            Error::InBatch { source, .. } => source.code(),
            Error::Store(e) => match e {
                S::NotFound(_) => ErrorCode::NotFound,
                S::Transition { .. } | S::Conflict { .. } => ErrorCode::IllegalTransition,
                S::StaleFence { .. } => ErrorCode::StaleFence,
                S::Owned { .. } => ErrorCode::Locked,
                S::Config(_) => ErrorCode::InvalidConfig,
                S::Closed | S::Unavailable(_) | S::Declared(_) => ErrorCode::Unavailable,
                S::Overloaded { .. } => ErrorCode::Overloaded,
                S::Internal(_) => ErrorCode::Internal,
                S::UnknownDependency { .. } => ErrorCode::InvalidSpec,
                S::UniqueHeld { .. } | S::JobExists(_) => ErrorCode::Conflict,
                S::WorkflowNotFound(_) => ErrorCode::NotFound,
                S::WorkflowIllegal { .. } => ErrorCode::IllegalTransition,
            },
        }
    }
}
