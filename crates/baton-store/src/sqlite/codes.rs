//! How a job's state, an edge's condition and status, and JSON values are kept in
//! SQLite columns, and read back strictly: a value that Baton does not know (a row
//! damaged, or written by a newer Baton) is an error naming it, never a default. A leaf
//! module: the row readers (`rows`, `graph`, `schedule_rows`) and the writer use it.

use baton_core::{Condition, EdgeStatus, State};
use rusqlite::types::Type;
use serde_json::Value;

/// A stored value that cannot be read back; its message names the value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

fn unreadable(kind: Type, message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, kind, Box::new(Unreadable(message)))
}

pub fn parse_state(s: &str) -> rusqlite::Result<State> {
    State::parse(s)
        .ok_or_else(|| unreadable(Type::Text, format!("stored job state {s:?} is not known")))
}

pub fn condition_code(on: Condition) -> i64 {
    match on {
        Condition::Completed => 0,
        Condition::Failed => 1,
        Condition::Finished => 2,
    }
}

pub fn condition_of(code: i64) -> rusqlite::Result<Condition> {
    match code {
        0 => Ok(Condition::Completed),
        1 => Ok(Condition::Failed),
        2 => Ok(Condition::Finished),
        other => Err(unreadable(
            Type::Integer,
            format!("stored dependency condition code {other} is not known"),
        )),
    }
}

pub fn edge_status(code: i64) -> rusqlite::Result<EdgeStatus> {
    EdgeStatus::from_i64(code).ok_or_else(|| {
        unreadable(
            Type::Integer,
            format!("stored dependency status code {code} is not known"),
        )
    })
}

/// A JSON column (`None` when NULL).
pub fn json(column: &str, text: Option<String>) -> rusqlite::Result<Option<Value>> {
    json_as(column, text)
}

/// A JSON column read as `T` (`None` when NULL).
pub fn json_as<T: serde::de::DeserializeOwned>(
    column: &str,
    text: Option<String>,
) -> rusqlite::Result<Option<T>> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| {
            unreadable(
                Type::Text,
                format!("stored {column} {t:?} cannot be read: {e}"),
            )
        })
    })
    .transpose()
}

pub fn event_kind(s: &str) -> rusqlite::Result<baton_core::EventKind> {
    baton_core::EventKind::parse(s)
        .ok_or_else(|| unreadable(Type::Text, format!("stored event type {s:?} is not known")))
}
