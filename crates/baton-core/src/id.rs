use std::fmt;

use serde::{Deserialize, Serialize};

/// A job id. Generated ids are UUIDv7 strings, so they sort by creation time; a client
/// may give its own id (1 to 128 characters of `A-Z a-z 0-9 . _ : -`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub const MAX_LEN: usize = 128;

    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// Checks a client-given id.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > Self::MAX_LEN {
            return Err(format!(
                "is {} characters long; at most {} are allowed",
                s.len(),
                Self::MAX_LEN
            ));
        }
        if let Some(c) = s.chars().find(|c| !is_id_char(*c)) {
            return Err(format!(
                "{s:?} contains {c:?}; ids use only letters, digits, '.', '_', ':' and '-'"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// Wraps a string known to be a valid id (read back from the store).
    pub fn from_trusted(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub(crate) fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_sort_by_time() {
        let a = JobId::generate();
        let b = JobId::generate();
        assert!(a < b, "{a} < {b}");
        assert!(JobId::parse(a.as_str()).is_ok());
    }

    #[test]
    fn client_ids_are_checked() {
        assert!(JobId::parse("order-42:retry_1.x").is_ok());
        assert!(JobId::parse("").unwrap_err().contains("empty"));
        assert!(JobId::parse("a b").unwrap_err().contains("' '"));
        assert!(JobId::parse(&"x".repeat(129)).unwrap_err().contains("129"));
    }
}
