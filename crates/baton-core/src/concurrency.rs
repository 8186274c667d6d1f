//! Concurrency limits across queues: at most `max` jobs with a label (or of a kind)
//! running at once, whatever queue they are in (`baton.toml`:
//! `concurrency_limits = [{label = "source:alfabeta", max = 2}, {kind = "render", max = 1}]`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a concurrency limit covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// Jobs carrying the label `key: value`.
    Label { key: String, value: String },
    /// Jobs of the kind.
    Kind(String),
}

/// At most `max` of the jobs it covers hold a slot (are `running`, `paused` or
/// `stopping`) at once, across every queue and every server sharing the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConcurrencyLimit {
    pub scope: LimitScope,
    pub max: u32,
}

/// The states in which a job holds its slot of a concurrency limit.
pub const HOLDING: [crate::State; 3] = [
    crate::State::Running,
    crate::State::Paused,
    crate::State::Stopping,
];

impl ConcurrencyLimit {
    /// A limit on the jobs carrying the label `key: value`.
    pub fn label(key: impl Into<String>, value: impl Into<String>, max: u32) -> Self {
        Self {
            scope: LimitScope::Label {
                key: key.into(),
                value: value.into(),
            },
            max,
        }
    }

    /// A limit on the jobs of a kind.
    pub fn kind(kind: impl Into<String>, max: u32) -> Self {
        Self {
            scope: LimitScope::Kind(kind.into()),
            max,
        }
    }

    /// Parses `key:value` (as in `baton.toml` and the `label` filter) into a label
    /// limit; the error says what is wrong.
    pub fn parse_label(text: &str, max: u32) -> Result<Self, String> {
        match text.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                Ok(Self::label(k.trim(), v.trim(), max))
            }
            _ => Err(format!(
                "label {text:?} must be written key:value, e.g. \"source:alfabeta\""
            )),
        }
    }

    /// The limit as people name it: `source:alfabeta` for a label, `kind render` for a
    /// kind.
    pub fn name(&self) -> String {
        match &self.scope {
            LimitScope::Label { key, value } => format!("{key}:{value}"),
            LimitScope::Kind(kind) => format!("kind {kind}"),
        }
    }

    /// Whether a job of this kind with these labels is held to the limit.
    pub fn covers(&self, kind: &str, labels: &BTreeMap<String, String>) -> bool {
        match &self.scope {
            LimitScope::Label { key, value } => labels.get(key) == Some(value),
            LimitScope::Kind(k) => k == kind,
        }
    }

    /// What a job waiting for the limit is told: `concurrency limit source:alfabeta (2/2)`.
    pub fn waiting_for(&self, held: u64) -> String {
        format!("concurrency limit {} ({held}/{})", self.name(), self.max)
    }
}

/// A limit and how many of its slots are held now, as `GET /api/resources` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LimitUse {
    /// `source:alfabeta` for a label, `kind render` for a kind.
    pub name: String,
    /// The label it covers (`key:value`), if it covers a label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The kind it covers, if it covers a kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The most of its jobs running at once.
    pub max: u32,
    /// Its jobs running, paused or stopping now, on every server sharing the store.
    pub held: u64,
}

/// Checks a set of limits: each covers something, allows at least one job, and none
/// is given twice.
pub fn check_limits(limits: &[ConcurrencyLimit]) -> Result<(), String> {
    for (i, l) in limits.iter().enumerate() {
        if l.max == 0 {
            return Err(format!(
                "concurrency limit {} has max 0: it would never run a job; the least is 1",
                l.name()
            ));
        }
        match &l.scope {
            LimitScope::Label { key, value } if key.is_empty() || value.is_empty() => {
                return Err("a concurrency limit's label needs a key and a value".into());
            }
            LimitScope::Kind(k) if k.is_empty() => {
                return Err("a concurrency limit's kind is empty".into());
            }
            _ => {}
        }
        if limits[..i].iter().any(|o| o.scope == l.scope) {
            return Err(format!("concurrency limit {} is given twice", l.name()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_covers_its_label_or_kind_only() {
        let labels: BTreeMap<String, String> =
            [("source".to_string(), "alfabeta".to_string())].into();
        let l = ConcurrencyLimit::parse_label("source:alfabeta", 2).unwrap();
        assert!(l.covers("command", &labels));
        assert!(!l.covers("command", &BTreeMap::new()));
        assert!(!ConcurrencyLimit::label("source", "other", 2).covers("command", &labels));
        let k = ConcurrencyLimit::kind("render", 1);
        assert!(k.covers("render", &BTreeMap::new()));
        assert!(!k.covers("command", &labels));
        assert_eq!(l.waiting_for(2), "concurrency limit source:alfabeta (2/2)");
        assert_eq!(k.name(), "kind render");
    }

    #[test]
    fn bad_limits_are_named() {
        assert!(
            ConcurrencyLimit::parse_label("alfabeta", 2)
                .unwrap_err()
                .contains("key:value")
        );
        assert!(ConcurrencyLimit::parse_label("source:", 2).is_err());
        let e = check_limits(&[ConcurrencyLimit::kind("render", 0)]).unwrap_err();
        assert!(e.contains("kind render") && e.contains("max 0"), "{e}");
        let twice = [
            ConcurrencyLimit::label("a", "b", 1),
            ConcurrencyLimit::label("a", "b", 3),
        ];
        assert!(check_limits(&twice).unwrap_err().contains("twice"));
        assert!(check_limits(&[ConcurrencyLimit::kind("", 1)]).is_err());
        assert!(check_limits(&[ConcurrencyLimit::label("a", "b", 1)]).is_ok());
    }
}
