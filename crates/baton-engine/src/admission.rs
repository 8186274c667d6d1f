//! Admission control: thresholds on the machine's memory, the store's disk and the
//! load, held against the monitor's readings (`monitor.rs`) or injected ones. While a
//! threshold is crossed, queues marked heavy start no new jobs and a low store disk
//! refuses new submissions; each crossing is one `resource.alert` event and each
//! clearing one `resource.cleared`. Running jobs are never touched.
//!
//! A threshold is crossed by the first reading past it, and clears once the readings
//! have stayed back past it by the hysteresis margin for `clear_after`: a reading that
//! flaps around the threshold keeps it crossed rather than crossing it again. Alerts of
//! one resource are at least `min_alert_interval` apart; a crossing that comes sooner
//! holds work all the same and is announced once the interval has passed, if the
//! reading is still past the threshold then (if not, neither it nor its clearing is).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::EventKind;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::monitor::MachineSample;

/// What the monitor watches, and when it holds work back (see the module's comment).
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceOptions {
    /// How often the machine is sampled; `None`: never, and readings come only from
    /// [`Pressure::inject`] (tests).
    pub sample_every: Option<Duration>,
    /// A folder on the store's disk (the SQLite database's); `None`: the disk is not
    /// watched (a PostgreSQL store's disk is the database server's).
    pub disk: Option<PathBuf>,
    /// Used memory above this percentage crosses (`None`: not watched).
    pub memory_above: Option<f64>,
    /// Free space on the store's disk below this percentage crosses.
    pub disk_free_below: Option<f64>,
    /// A one-minute load average above this crosses.
    pub load_above: Option<f64>,
    /// How long the readings must stay back past a crossed threshold (by the
    /// hysteresis margin) before it clears.
    pub clear_after: Duration,
    /// The margin, in percent of the threshold: memory above 90 clears below 85.5
    /// with 5.
    pub hysteresis: f64,
    /// The least time between two alerts of one resource.
    pub min_alert_interval: Duration,
}

impl ResourceOptions {
    pub const DEFAULT_SAMPLE_EVERY: Duration = Duration::from_secs(1);
    pub const DEFAULT_CLEAR_AFTER: Duration = Duration::from_secs(30);
    pub const DEFAULT_MIN_ALERT_INTERVAL: Duration = Duration::from_secs(300);
    pub const DEFAULT_HYSTERESIS: f64 = 5.0;
    /// Shorter sampling would cost more than it tells.
    pub const MIN_SAMPLE_EVERY: Duration = Duration::from_millis(100);

    /// Each bad value, named by its setting.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(every) = self.sample_every
            && every < Self::MIN_SAMPLE_EVERY
        {
            return Err(format!(
                "sample_every: {every:?} is too short (at least {:?})",
                Self::MIN_SAMPLE_EVERY
            ));
        }
        let pct = |name: &str, v: Option<f64>| match v {
            Some(v) if !(v > 0.0 && v < 100.0) => Err(format!(
                "{name}: {v} is not a percentage between 0 and 100 (exclusive)"
            )),
            _ => Ok(()),
        };
        pct("memory_above", self.memory_above)?;
        pct("disk_free_below", self.disk_free_below)?;
        if let Some(v) = self.load_above
            && !(v > 0.0 && v.is_finite())
        {
            return Err(format!("load_above: {v} must be a number above 0"));
        }
        if !(0.0..50.0).contains(&self.hysteresis) {
            return Err(format!(
                "hysteresis: {} is not a percentage of the threshold from 0 to 50",
                self.hysteresis
            ));
        }
        Ok(())
    }
}

impl Default for ResourceOptions {
    /// Sampled every second; memory above 90 % and a store disk with less than 5 %
    /// free hold heavy work; the load is not watched.
    fn default() -> Self {
        Self {
            sample_every: Some(Self::DEFAULT_SAMPLE_EVERY),
            disk: None,
            memory_above: Some(90.0),
            disk_free_below: Some(5.0),
            load_above: None,
            clear_after: Self::DEFAULT_CLEAR_AFTER,
            hysteresis: Self::DEFAULT_HYSTERESIS,
            min_alert_interval: Self::DEFAULT_MIN_ALERT_INTERVAL,
        }
    }
}

/// One look at the machine, as the thresholds see it; `None`: not measured (that
/// threshold keeps its state).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reading {
    /// Used memory, 0 to 100.
    pub memory_pct: Option<f64>,
    /// Free space on the store's disk, 0 to 100.
    pub disk_free_pct: Option<f64>,
    /// The one-minute load average.
    pub load: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Memory,
    Disk,
    Load,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Disk => "disk",
            Resource::Load => "load",
        }
    }

    fn of(self, r: &Reading) -> Option<f64> {
        match self {
            Resource::Memory => r.memory_pct,
            Resource::Disk => r.disk_free_pct,
            Resource::Load => r.load,
        }
    }

    /// Disk space is watched from below: less free is worse.
    fn low_is_bad(self) -> bool {
        self == Resource::Disk
    }

    /// The reading as a person reads it: `memory 93 %`, `disk free 3.2 %`, `load 5.1`.
    fn show(self, v: f64) -> String {
        match self {
            Resource::Memory => format!("memory {} %", num(v, 1)),
            Resource::Disk => format!("disk free {} %", num(v, 1)),
            Resource::Load => format!("load {}", num(v, 2)),
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Resource::Load => "",
            _ => " %",
        }
    }
}

/// A threshold as it stands.
#[derive(Clone, Debug, PartialEq)]
pub struct Gauge {
    pub resource: Resource,
    pub threshold: f64,
    /// Where the readings must stay for `clear_after` once it is crossed.
    pub clear_at: f64,
    /// The last reading.
    pub value: Option<f64>,
    pub crossed: bool,
    /// While crossed, why (`memory 93 % > 90 %`).
    pub message: Option<String>,
}

/// Admission control's state: the thresholds, the last reading and the last machine
/// sample. Cheap to clone; [`crate::Engine::pressure`] gives the engine's.
#[derive(Clone)]
pub struct Pressure {
    shared: Arc<Shared>,
}

struct Shared {
    options: ResourceOptions,
    /// Some threshold is crossed: heavy queues hold.
    held: AtomicBool,
    /// The disk threshold is crossed: submissions are refused.
    disk_low: AtomicBool,
    state: Mutex<State>,
    /// Wakes the task that writes the events and wakes held queues.
    changed: Notify,
    samples: watch::Sender<Option<Arc<MachineSample>>>,
}

struct State {
    tracks: Vec<Track>,
    /// Events to write, in order.
    outbox: Vec<(EventKind, Value)>,
    /// The hold was lifted since the task last looked.
    released: bool,
}

struct Track {
    resource: Resource,
    threshold: f64,
    clear_at: f64,
    value: Option<f64>,
    crossed: bool,
    /// Since when the readings have been back past `clear_at`.
    calm_since: Option<Instant>,
    /// An alert was written for this crossing: its clearing is written too.
    announced: bool,
    last_alert: Option<Instant>,
}

impl Track {
    fn over(&self, v: f64) -> bool {
        if self.resource.low_is_bad() {
            v < self.threshold
        } else {
            v > self.threshold
        }
    }

    fn calm(&self, v: f64) -> bool {
        if self.resource.low_is_bad() {
            v > self.clear_at
        } else {
            v < self.clear_at
        }
    }

    fn message(&self, clear_after: Duration) -> Option<String> {
        if !self.crossed {
            return None;
        }
        let v = self.value?;
        let r = self.resource;
        let (past, back) = if r.low_is_bad() {
            ("<", "over")
        } else {
            (">", "under")
        };
        let unit = r.unit();
        Some(if self.over(v) {
            format!("{} {past} {}{unit}", r.show(v), num(self.threshold, 2))
        } else {
            format!(
                "{} (was {past} {}{unit}, clears after {} {back} {}{unit})",
                r.show(v),
                num(self.threshold, 2),
                baton_core::duration::format(clear_after),
                num(self.clear_at, 2)
            )
        })
    }

    fn gauge(&self, clear_after: Duration) -> Gauge {
        Gauge {
            resource: self.resource,
            threshold: self.threshold,
            clear_at: self.clear_at,
            value: self.value,
            crossed: self.crossed,
            message: self.message(clear_after),
        }
    }
}

impl Pressure {
    /// Checks the options first; an error names the setting.
    pub(crate) fn new(options: ResourceOptions) -> Result<Pressure, String> {
        options.validate()?;
        let margin = options.hysteresis / 100.0;
        let mut tracks = Vec::new();
        for (resource, threshold) in [
            (Resource::Memory, options.memory_above),
            (Resource::Disk, options.disk_free_below),
            (Resource::Load, options.load_above),
        ] {
            let Some(threshold) = threshold else { continue };
            let clear_at = if resource.low_is_bad() {
                threshold * (1.0 + margin)
            } else {
                threshold * (1.0 - margin)
            };
            tracks.push(Track {
                resource,
                threshold,
                clear_at,
                value: None,
                crossed: false,
                calm_since: None,
                announced: false,
                last_alert: None,
            });
        }
        Ok(Pressure {
            shared: Arc::new(Shared {
                options,
                held: AtomicBool::new(false),
                disk_low: AtomicBool::new(false),
                state: Mutex::new(State {
                    tracks,
                    outbox: Vec::new(),
                    released: false,
                }),
                changed: Notify::new(),
                samples: watch::channel(None).0,
            }),
        })
    }

    pub fn options(&self) -> &ResourceOptions {
        &self.shared.options
    }

    /// Takes a reading as if the monitor had sampled it. With sampling on, the next
    /// sample replaces it; tests turn sampling off (`sample_every: None`).
    pub fn inject(&self, reading: Reading) {
        self.observe(reading, Instant::now());
    }

    /// Whether heavy queues are held, and why (`memory 93 % > 90 %`; several reasons
    /// are joined by `; `).
    pub fn held(&self) -> Option<String> {
        if !self.is_held() {
            return None;
        }
        let state = self.lock();
        let reasons: Vec<String> = state
            .tracks
            .iter()
            .filter_map(|t| t.message(self.shared.options.clear_after))
            .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Each threshold with its last reading.
    pub fn gauges(&self) -> Vec<Gauge> {
        let clear_after = self.shared.options.clear_after;
        self.lock()
            .tracks
            .iter()
            .map(|t| t.gauge(clear_after))
            .collect()
    }

    /// The monitor's samples of the machine: the last one, and each new one as it is
    /// taken (`None` until the first, and for ever when sampling is off).
    pub fn samples(&self) -> watch::Receiver<Option<Arc<MachineSample>>> {
        self.shared.samples.subscribe()
    }

    pub(crate) fn is_held(&self) -> bool {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Why a submission is refused now: the store's disk is low.
    pub(crate) fn refusal(&self) -> Option<String> {
        if !self.shared.disk_low.load(Ordering::SeqCst) {
            return None;
        }
        let state = self.lock();
        let t = state.tracks.iter().find(|t| t.resource == Resource::Disk)?;
        let disk = match &self.shared.options.disk {
            Some(dir) => format!("the store's disk ({})", dir.display()),
            None => "the store's disk".to_owned(),
        };
        Some(format!(
            "{disk} has {} % free, under disk_free_below = {} %: no new job is accepted until it has had more than {} % free for {}",
            num(t.value.unwrap_or(0.0), 1),
            num(t.threshold, 2),
            num(t.clear_at, 2),
            baton_core::duration::format(self.shared.options.clear_after)
        ))
    }

    pub(crate) fn record_sample(&self, sample: MachineSample) {
        let reading = sample.reading();
        self.shared.samples.send_replace(Some(Arc::new(sample)));
        self.observe(reading, Instant::now());
    }

    pub(crate) fn observe(&self, reading: Reading, now: Instant) {
        let mut state = self.lock();
        for t in &mut state.tracks {
            let Some(v) = t.resource.of(&reading) else {
                continue;
            };
            t.value = Some(v);
            if t.over(v) {
                t.crossed = true;
                t.calm_since = None;
            } else if t.crossed && t.calm(v) {
                t.calm_since.get_or_insert(now);
            } else {
                t.calm_since = None;
            }
        }
        self.settle(&mut state, now);
        drop(state);
        self.shared.changed.notify_one();
    }

    /// What the task has to do: the events to write, whether the hold was lifted, and
    /// when to look again (a crossing that may clear, an alert held back).
    pub(crate) fn take_work(
        &self,
        now: Instant,
    ) -> (Vec<(EventKind, Value)>, bool, Option<Instant>) {
        let mut state = self.lock();
        self.settle(&mut state, now);
        let options = &self.shared.options;
        let mut next: Option<Instant> = None;
        for t in &state.tracks {
            if !t.crossed {
                continue;
            }
            let at = match (t.calm_since, t.last_alert) {
                (Some(since), _) => Some(since + options.clear_after),
                (None, Some(last)) if !t.announced => Some(last + options.min_alert_interval),
                _ => None,
            };
            if let Some(at) = at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        let released = std::mem::take(&mut state.released);
        (std::mem::take(&mut state.outbox), released, next)
    }

    pub(crate) async fn changed(&self) {
        self.shared.changed.notified().await
    }

    /// Clears the crossings whose readings have been calm long enough, announces the
    /// ones due, and sets the flags the dispatchers read.
    fn settle(&self, state: &mut State, now: Instant) {
        let options = &self.shared.options;
        let State { tracks, outbox, .. } = state;
        for t in tracks.iter_mut() {
            if t.crossed
                && t.calm_since
                    .is_some_and(|since| now.duration_since(since) >= options.clear_after)
            {
                t.crossed = false;
                t.calm_since = None;
                if std::mem::take(&mut t.announced) {
                    let v = t.value.unwrap_or(t.clear_at);
                    let message = format!(
                        "{} ({} {}{} for {})",
                        t.resource.show(v),
                        if t.resource.low_is_bad() {
                            "over"
                        } else {
                            "under"
                        },
                        num(t.clear_at, 2),
                        t.resource.unit(),
                        baton_core::duration::format(options.clear_after)
                    );
                    outbox.push((
                        EventKind::ResourceCleared,
                        json!({"resource": t.resource.as_str(), "value": v,
                            "threshold": t.threshold, "clear_at": t.clear_at, "message": message}),
                    ));
                }
            }
            let due = t
                .last_alert
                .is_none_or(|last| now.duration_since(last) >= options.min_alert_interval);
            if let Some(v) = t.value
                && t.crossed
                && !t.announced
                && t.over(v)
                && due
            {
                t.announced = true;
                t.last_alert = Some(now);
                let message = t.message(options.clear_after).unwrap_or_default();
                outbox.push((
                    EventKind::ResourceAlert,
                    json!({"resource": t.resource.as_str(), "value": v,
                        "threshold": t.threshold, "clear_at": t.clear_at, "message": message}),
                ));
            }
        }
        let held = tracks.iter().any(|t| t.crossed);
        let disk_low = tracks
            .iter()
            .any(|t| t.crossed && t.resource == Resource::Disk);
        self.shared.disk_low.store(disk_low, Ordering::SeqCst);
        if self.shared.held.swap(held, Ordering::SeqCst) && !held {
            state.released = true;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes the alerts and clearings admission control decides, wakes heavy queues
/// when the hold lifts, and looks again when a crossing may clear or a held-back alert
/// falls due. Sleeps otherwise.
pub(crate) async fn run(inner: Arc<crate::engine::Inner>) {
    let pressure = inner.pressure.clone();
    loop {
        let (events, released, next) = pressure.take_work(Instant::now());
        if released {
            tracing::info!("resource pressure cleared: heavy queues start jobs again");
            inner.wake_heavy();
        }
        for (kind, mut data) in events {
            let server = inner.server_info();
            if let Value::Object(map) = &mut data {
                map.insert("server_id".into(), json!(server.id));
                map.insert("host".into(), json!(server.host));
            }
            let message = data["message"].as_str().unwrap_or_default().to_owned();
            if kind == EventKind::ResourceAlert {
                tracing::warn!(resource = %data["resource"], "{message}");
            } else {
                tracing::info!(resource = %data["resource"], "{message}");
            }
            // A failed write is not tried again: the next crossing is, and the log
            // has this one.
            if let Err(e) = inner.store.note(kind, data, inner.clock.now()).await {
                tracing::warn!(error = %e, event = %kind, "cannot record a resource event");
            }
        }
        let wake = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = pressure.changed() => {}
            _ = wake => {}
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

/// `v` with at most `places` decimals, without trailing zeros: 93, 93.5, 5.25.
fn num(v: f64, places: usize) -> String {
    let s = format!("{v:.places$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pressure(clear_after_ms: u64, min_alert_interval_ms: u64) -> Pressure {
        Pressure::new(ResourceOptions {
            sample_every: None,
            memory_above: Some(90.0),
            disk_free_below: Some(5.0),
            load_above: Some(2.0),
            clear_after: Duration::from_millis(clear_after_ms),
            min_alert_interval: Duration::from_millis(min_alert_interval_ms),
            ..ResourceOptions::default()
        })
        .unwrap()
    }

    fn memory(v: f64) -> Reading {
        Reading {
            memory_pct: Some(v),
            ..Reading::default()
        }
    }

    /// Feeds readings one a second of monotonic time from `start` and returns the
    /// events they caused, each as (second, type, resource).
    fn feed(p: &Pressure, start: Instant, readings: &[Reading]) -> Vec<(usize, &'static str)> {
        let mut out = Vec::new();
        for (i, r) in readings.iter().enumerate() {
            let now = start + Duration::from_secs(i as u64);
            p.observe(*r, now);
            let (events, _, _) = p.take_work(now);
            out.extend(events.into_iter().map(|(k, _)| (i, k.as_str())));
        }
        out
    }

    #[test]
    fn a_flapping_reading_alerts_once_and_clears_once() {
        let p = pressure(3_000, 0);
        let start = Instant::now();
        let mut readings: Vec<Reading> = (0..20)
            .map(|i| memory(if i % 2 == 0 { 89.0 } else { 91.0 }))
            .collect();
        // Back under 85.5 for good at second 20: cleared at 23.
        readings.extend((0..6).map(|_| memory(80.0)));
        assert_eq!(
            feed(&p, start, &readings),
            [(1, "resource.alert"), (23, "resource.cleared")]
        );
        assert!(p.held().is_none());
    }

    #[test]
    fn calm_readings_must_last_the_clear_time_without_a_break() {
        let p = pressure(3_000, 0);
        let start = Instant::now();
        let readings = [91.0, 80.0, 80.0, 88.0, 80.0, 80.0, 80.0, 80.0].map(memory);
        // 88 is under the threshold but over 85.5: the calm time starts again at 4.
        assert_eq!(
            feed(&p, start, &readings),
            [(0, "resource.alert"), (7, "resource.cleared")]
        );
    }

    #[test]
    fn a_crossing_soon_after_the_last_alert_is_announced_once_the_interval_passed() {
        let p = pressure(1_000, 10_000);
        let start = Instant::now();
        // Crossed at 0, cleared at 2; crossed again at 3 and 4 (held, not announced),
        // calm from 5; crossed again at 8 and still at 10: announced then.
        let readings = [
            95.0, 80.0, 80.0, 95.0, 95.0, 80.0, 80.0, 80.0, 95.0, 95.0, 95.0,
        ]
        .map(memory);
        let mut seen = Vec::new();
        for (i, r) in readings.iter().enumerate() {
            let now = start + Duration::from_secs(i as u64);
            p.observe(*r, now);
            let (events, _, _) = p.take_work(now);
            seen.extend(events.into_iter().map(|(k, _)| (i, k.as_str())));
            if i == 4 {
                assert!(p.held().is_some(), "held while crossed, announced or not");
            }
        }
        assert_eq!(
            seen,
            [
                (0, "resource.alert"),
                (2, "resource.cleared"),
                (10, "resource.alert")
            ]
        );
    }

    #[test]
    fn reasons_name_the_reading_and_the_threshold() {
        let p = pressure(30_000, 0);
        let now = Instant::now();
        p.observe(
            Reading {
                memory_pct: Some(93.0),
                disk_free_pct: Some(3.2),
                load: Some(2.5),
            },
            now,
        );
        assert_eq!(
            p.held().as_deref(),
            Some("memory 93 % > 90 %; disk free 3.2 % < 5 %; load 2.5 > 2")
        );
        assert!(
            p.refusal()
                .unwrap()
                .contains("has 3.2 % free, under disk_free_below = 5 %")
        );
        p.observe(memory(80.0), now);
        assert_eq!(
            p.held().unwrap().split("; ").next(),
            Some("memory 80 % (was > 90 %, clears after 30s under 85.5 %)")
        );
        let (events, _, next) = p.take_work(now);
        let data: Vec<&Value> = events.iter().map(|(_, d)| d).collect();
        assert_eq!(data[0]["message"], "memory 93 % > 90 %");
        assert_eq!(data[0]["threshold"], 90.0);
        assert_eq!(
            next,
            Some(now + Duration::from_secs(30)),
            "when memory may clear"
        );
    }

    #[test]
    fn the_hold_lifts_when_every_threshold_has_cleared() {
        let p = pressure(0, 0);
        let now = Instant::now();
        p.observe(
            Reading {
                memory_pct: Some(95.0),
                load: Some(3.0),
                ..Reading::default()
            },
            now,
        );
        assert!(p.is_held());
        p.observe(memory(50.0), now);
        assert!(p.is_held(), "the load has not cleared");
        assert!(!p.take_work(now).1);
        p.observe(
            Reading {
                load: Some(1.0),
                ..Reading::default()
            },
            now,
        );
        assert!(!p.is_held());
        assert!(p.take_work(now).1, "released");
    }

    #[test]
    fn bad_options_are_named() {
        let check = |o: ResourceOptions, part: &str| {
            let e = Pressure::new(o).err().expect("refused");
            assert!(e.starts_with(part), "{e}");
        };
        let d = ResourceOptions::default;
        check(
            ResourceOptions {
                memory_above: Some(120.0),
                ..d()
            },
            "memory_above: 120",
        );
        check(
            ResourceOptions {
                disk_free_below: Some(0.0),
                ..d()
            },
            "disk_free_below: 0",
        );
        check(
            ResourceOptions {
                load_above: Some(-1.0),
                ..d()
            },
            "load_above: -1",
        );
        check(
            ResourceOptions {
                hysteresis: 60.0,
                ..d()
            },
            "hysteresis: 60",
        );
        check(
            ResourceOptions {
                sample_every: Some(Duration::from_millis(10)),
                ..d()
            },
            "sample_every: 10ms",
        );
    }
}
