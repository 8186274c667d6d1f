//! `concurrency_limits`: at most so many jobs with a label, or of a kind, running at
//! once across every queue (`[{label = "source:alfabeta", max = 2}, {kind = "render",
//! max = 1}]`). Each bad entry is refused at start, named by its place in the list.

use anyhow::{Result, bail};
use baton_engine::ConcurrencyLimit;
use serde::Deserialize;

/// One entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimit {
    /// `key:value`.
    pub label: Option<String>,
    pub kind: Option<String>,
    pub max: Option<i64>,
}

pub fn limits(
    file: Option<Vec<FileLimit>>,
    source: &dyn Fn(&str) -> String,
) -> Result<Vec<ConcurrencyLimit>> {
    let mut out = Vec::new();
    for (i, l) in file.into_iter().flatten().enumerate() {
        let named = || source(&format!("concurrency_limits[{i}]"));
        let max = match l.max {
            Some(n) if n >= 1 && n <= i64::from(u32::MAX) => n as u32,
            Some(n) => bail!(
                "invalid setting {}: max = {n}; it must be at least 1",
                named()
            ),
            None => bail!(
                "invalid setting {}: it needs a max (e.g. {{ label = \"source:alfabeta\", max = 2 }})",
                named()
            ),
        };
        let limit = match (&l.label, &l.kind) {
            (Some(label), None) => ConcurrencyLimit::parse_label(label, max)
                .map_err(|m| anyhow::anyhow!("invalid setting {}: {m}", named()))?,
            (None, Some(kind)) if !kind.trim().is_empty() => {
                ConcurrencyLimit::kind(kind.trim(), max)
            }
            (None, Some(_)) => bail!("invalid setting {}: the kind is empty", named()),
            _ => bail!(
                "invalid setting {}: give either a label (\"key:value\") or a kind, not both or neither",
                named()
            ),
        };
        out.push(limit);
    }
    if let Err(m) = baton_core::concurrency::check_limits(&out) {
        bail!("invalid setting {}: {m}", source("concurrency_limits"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{load_with, refused};
    use crate::config::Flags;
    use baton_engine::ConcurrencyLimit;

    #[test]
    fn concurrency_limits_are_read_and_bad_ones_named() {
        let c = load_with(None, &[], Flags::default()).unwrap();
        assert!(c.concurrency_limits.is_empty());
        let file = "concurrency_limits = [{label = \"source:alfabeta\", max = 2}, {kind = \"render\", max = 1}]";
        let c = load_with(Some(file), &[], Flags::default()).unwrap();
        assert_eq!(
            c.concurrency_limits,
            [
                ConcurrencyLimit::label("source", "alfabeta", 2),
                ConcurrencyLimit::kind("render", 1)
            ]
        );
        for (text, part) in [
            (
                "[{label = \"alfabeta\", max = 2}]",
                "must be written key:value",
            ),
            ("[{label = \"a:b\"}]", "concurrency_limits[0] in"),
            (
                "[{label = \"a:b\", max = 0}]",
                "max = 0; it must be at least 1",
            ),
            (
                "[{label = \"a:b\", kind = \"x\", max = 1}]",
                "not both or neither",
            ),
            ("[{max = 1}]", "not both or neither"),
            ("[{kind = \" \", max = 1}]", "the kind is empty"),
            (
                "[{kind = \"x\", max = 1, queue = \"a\"}]",
                "unknown field `queue`",
            ),
            (
                "[{kind = \"x\", max = 1}, {kind = \"x\", max = 2}]",
                "concurrency limit kind x is given twice",
            ),
        ] {
            refused(Some(&format!("concurrency_limits = {text}")), &[], part);
        }
        refused(
            Some("concurrency_limits = [{kind = \"x\", max = 1}, {label = \"a\", max = 1}]"),
            &[],
            "concurrency_limits[1]",
        );
    }
}
