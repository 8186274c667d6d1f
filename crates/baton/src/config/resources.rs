//! `[queues]` with heavy queues, and `[resources]`: the machine monitor and the
//! thresholds of admission control. Each bad value is refused at start with its name.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, bail};
use baton_engine::ResourceOptions;
use serde::Deserialize;

/// `[resources]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileResources {
    /// How often the machine is sampled (`"1s"`).
    pub sample_every: Option<String>,
    /// Used memory, in percent, above which heavy queues hold; or `"off"`.
    pub memory_above: Option<Threshold>,
    /// Free space on the store's disk, in percent, below which heavy queues hold and
    /// submissions are refused; or `"off"`.
    pub disk_free_below: Option<Threshold>,
    /// The one-minute load average above which heavy queues hold: a number, `"cores"`
    /// (the number of cores), or `"off"` (the default).
    pub load_above: Option<Threshold>,
    /// How long readings stay back under a crossed threshold (by the hysteresis
    /// margin) before it clears.
    pub clear_after: Option<String>,
    /// The margin, in percent of the threshold.
    pub hysteresis: Option<f64>,
    /// The least time between two alerts of one resource.
    pub min_alert_interval: Option<String>,
}

/// A threshold as written: a number or a word.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Threshold {
    Number(f64),
    Word(String),
}

/// `[queues]`: each queue's concurrency (`media = 2`), or a table
/// (`media = { concurrency = 2, heavy = true }`); and the heavy ones.
pub fn queues(
    file: Option<&BTreeMap<String, toml::Value>>,
    source: &dyn Fn(&str) -> String,
) -> Result<(BTreeMap<String, usize>, Vec<String>)> {
    let mut queues = BTreeMap::new();
    let mut heavy = Vec::new();
    for (name, value) in file.into_iter().flatten() {
        let named = || source(&format!("queues.{name}"));
        let concurrency = match value {
            toml::Value::Integer(n) => *n,
            toml::Value::Table(t) => {
                if let Some(key) = t
                    .keys()
                    .find(|k| !matches!(k.as_str(), "concurrency" | "heavy"))
                {
                    bail!(
                        "invalid setting {}: unknown key {key:?} (expected concurrency and heavy)",
                        named()
                    );
                }
                match t.get("heavy") {
                    None | Some(toml::Value::Boolean(false)) => {}
                    Some(toml::Value::Boolean(true)) => heavy.push(name.clone()),
                    Some(other) => bail!(
                        "invalid setting {}: heavy = {other} is not true or false",
                        named()
                    ),
                }
                match t.get("concurrency") {
                    Some(toml::Value::Integer(n)) => *n,
                    Some(other) => bail!(
                        "invalid setting {}: concurrency = {other} is not a whole number",
                        named()
                    ),
                    None => bail!(
                        "invalid setting {}: queue {name:?} needs a concurrency (e.g. {{ concurrency = 2, heavy = true }})",
                        named()
                    ),
                }
            }
            other => bail!(
                "invalid setting {}: {other} is neither a concurrency nor a table like {{ concurrency = 2, heavy = true }}",
                named()
            ),
        };
        if concurrency < 1 {
            bail!(
                "invalid setting {}: queue {name:?} needs a concurrency of at least 1",
                source("queues")
            );
        }
        queues.insert(name.clone(), concurrency as usize);
    }
    Ok((queues, heavy))
}

/// `[resources]` as the engine takes it; the disk is set by `serve` from the store.
pub fn resources(
    file: Option<FileResources>,
    source: &dyn Fn(&str) -> String,
) -> Result<ResourceOptions> {
    let file = file.unwrap_or_default();
    let defaults = ResourceOptions::default();
    let named = |key: &str| source(&format!("resources.{key}"));
    let duration = |key: &str, text: Option<&String>, default: Duration| match text {
        None => Ok(default),
        Some(t) => baton_core::duration::parse(t)
            .map_err(|m| anyhow::anyhow!("invalid setting {} = {t:?}: {m}", named(key))),
    };
    let threshold = |key: &str, t: Option<&Threshold>, default: Option<f64>| match t {
        None => Ok(default),
        Some(Threshold::Number(n)) => Ok(Some(*n)),
        Some(Threshold::Word(w)) if w == "off" => Ok(None),
        Some(Threshold::Word(w)) if w == "cores" && key == "load_above" => Ok(Some(
            std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        )),
        Some(Threshold::Word(w)) => {
            let words = if key == "load_above" {
                "a number, \"cores\" or \"off\""
            } else {
                "a percentage or \"off\""
            };
            Err(anyhow::anyhow!(
                "invalid setting {} = {w:?}: expected {words}",
                named(key)
            ))
        }
    };
    let sample_every = match &file.sample_every {
        None => defaults.sample_every,
        Some(t) => match baton_core::duration::parse(t) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => bail!(
                "invalid setting {} = {t:?}: must be longer than 0s",
                named("sample_every")
            ),
            Err(m) => bail!("invalid setting {} = {t:?}: {m}", named("sample_every")),
        },
    };
    let options = ResourceOptions {
        sample_every,
        disk: None,
        memory_above: threshold(
            "memory_above",
            file.memory_above.as_ref(),
            defaults.memory_above,
        )?,
        disk_free_below: threshold(
            "disk_free_below",
            file.disk_free_below.as_ref(),
            defaults.disk_free_below,
        )?,
        load_above: threshold("load_above", file.load_above.as_ref(), defaults.load_above)?,
        clear_after: duration(
            "clear_after",
            file.clear_after.as_ref(),
            defaults.clear_after,
        )?,
        hysteresis: file.hysteresis.unwrap_or(defaults.hysteresis),
        min_alert_interval: duration(
            "min_alert_interval",
            file.min_alert_interval.as_ref(),
            defaults.min_alert_interval,
        )?,
    };
    // The engine's own check names the setting first: `memory_above: ...`.
    if let Err(m) = options.validate() {
        let (key, why) = m.split_once(": ").unwrap_or(("", m.as_str()));
        bail!("invalid setting {}: {why}", named(key));
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{load_with, refused};
    use super::*;
    use crate::config::Flags;

    #[test]
    fn queues_take_a_concurrency_or_a_table_that_marks_them_heavy() {
        let c = load_with(
            Some("[queues]\ndefault = 8\nmail = { concurrency = 4 }\n[queues.media]\nconcurrency = 2\nheavy = true"),
            &[],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(
            c.queues.into_iter().collect::<Vec<_>>(),
            [
                ("default".to_owned(), 8),
                ("mail".to_owned(), 4),
                ("media".to_owned(), 2)
            ]
        );
        assert_eq!(c.heavy_queues, ["media"]);
        refused(
            Some("[queues]\nmedia = { heavy = true }"),
            &[],
            "invalid setting queues.media in",
        );
        refused(
            Some("[queues]\nmedia = { concurrency = 2, heavy = \"yes\" }"),
            &[],
            "heavy = \"yes\" is not true or false",
        );
        refused(
            Some("[queues]\nmedia = { concurrency = 2, hevy = true }"),
            &[],
            "unknown key \"hevy\"",
        );
        refused(
            Some("[queues]\nmedia = { concurrency = 0, heavy = true }"),
            &[],
            "queue \"media\" needs a concurrency of at least 1",
        );
        refused(
            Some("[queues]\nmedia = \"two\""),
            &[],
            "is neither a concurrency nor a table",
        );
    }

    #[test]
    fn resources_have_defaults_and_every_bad_value_is_named() {
        let c = load_with(None, &[], Flags::default()).unwrap();
        assert_eq!(c.resources, ResourceOptions::default());
        assert_eq!(c.resources.memory_above, Some(90.0));
        assert_eq!(c.resources.disk_free_below, Some(5.0));
        assert_eq!(c.resources.load_above, None, "the load is not watched");
        assert_eq!(c.resources.sample_every, Some(Duration::from_secs(1)));

        let file = "[resources]\nsample_every = \"2s\"\nmemory_above = 80\ndisk_free_below = 7.5\nload_above = \"cores\"\nclear_after = \"1m\"\nhysteresis = 10\nmin_alert_interval = \"0s\"";
        let c = load_with(Some(file), &[], Flags::default()).unwrap();
        let cores = std::thread::available_parallelism().unwrap().get() as f64;
        assert_eq!(
            c.resources,
            ResourceOptions {
                sample_every: Some(Duration::from_secs(2)),
                disk: None,
                memory_above: Some(80.0),
                disk_free_below: Some(7.5),
                load_above: Some(cores),
                clear_after: Duration::from_secs(60),
                hysteresis: 10.0,
                min_alert_interval: Duration::ZERO,
            }
        );
        let c = load_with(
            Some("[resources]\nmemory_above = \"off\"\nload_above = 6"),
            &[],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(
            (c.resources.memory_above, c.resources.load_above),
            (None, Some(6.0))
        );

        for (file, part) in [
            (
                "memory_above = 120",
                "invalid setting resources.memory_above in",
            ),
            ("memory_above = \"cores\"", "resources.memory_above in"),
            ("disk_free_below = 0", "resources.disk_free_below in"),
            (
                "disk_free_below = \"lots\"",
                "expected a percentage or \"off\"",
            ),
            ("load_above = 0", "resources.load_above in"),
            (
                "load_above = \"many\"",
                "expected a number, \"cores\" or \"off\"",
            ),
            ("hysteresis = -1", "resources.hysteresis in"),
            ("sample_every = \"10ms\"", "resources.sample_every in"),
            ("sample_every = \"0s\"", "must be longer than 0s"),
            ("clear_after = \"soon\"", "resources.clear_after in"),
            (
                "min_alert_interval = \"-5m\"",
                "resources.min_alert_interval in",
            ),
            ("colour = 1", "unknown field `colour`"),
        ] {
            refused(Some(&format!("[resources]\n{file}")), &[], part);
        }
    }
}
