//! `baton bench scheduler`: how late schedules fire, and what the scheduler costs when
//! nothing is due, with many schedules stored.
//!
//! It creates `schedules` schedules: most have their next run hours away (daily, weekly
//! and monthly cron triggers); `firing` of them are intervals of `period`, their starts
//! spread evenly over one period, so that during `rounds` periods a fire is due every
//! `period / firing`. Each fire submits a no-op job. A fire's lateness is from its
//! scheduled time to when a subscriber receives its `schedule.fired` event, which is
//! published once the fire's write (the job, the history, the schedule's next run) is
//! durable. Then the firing schedules are paused, every schedule's next run is hours
//! away, and the engine's CPU time (from `/proc/self/stat`) is measured over an idle
//! window; a figure that cannot be read fails the bench.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_engine::{Engine, EventKind, JobSpec, ScheduleSpec, Trigger, Weekday};
use baton_store::SqliteStore;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::bench_proc;

pub struct Settings {
    pub schedules: usize,
    pub firing: usize,
    pub period: Duration,
    pub rounds: usize,
    pub idle: Duration,
    /// Schedules created at once (group commit batches them).
    pub concurrency: usize,
}

pub async fn run(store: SqliteStore, s: Settings, durability: &str) -> Result<Value> {
    if s.schedules == 0 || s.firing == 0 || s.rounds == 0 || s.concurrency == 0 {
        bail!("--schedules, --firing, --rounds and --concurrency must be at least 1");
    }
    if s.firing > s.schedules {
        bail!("--firing cannot be more than --schedules");
    }
    if s.period < Duration::from_secs(1) {
        bail!("--period must be at least 1s (the shortest interval)");
    }
    let engine = Engine::builder()
        .store(Arc::new(store))
        .queue("default", 64)
        .handler("noop", |_ctx, _payload| async { Ok(Value::Null) })
        .build()
        .await?;
    let now = chrono::Utc::now();
    // Far from now in any zone used below: no far schedule fires during the bench.
    let far_hour = (now.format("%H").to_string().parse::<u32>().unwrap_or(0) + 12) % 24;
    let far = s.schedules - s.firing;
    let started = Instant::now();
    futures::stream::iter(0..far)
        .map(|i| {
            let engine = engine.clone();
            async move {
                let trigger = match i % 3 {
                    0 => Trigger::daily(far_hour, (i % 60) as u32),
                    1 => Trigger::weekly(&[Weekday::Sun], far_hour, (i % 60) as u32),
                    _ => Trigger::cron(format!("{} {far_hour} 1 * *", i % 60)),
                };
                let spec = ScheduleSpec::new(trigger)
                    .id(format!("far-{i:06}"))
                    .timezone(if i % 2 == 0 { "UTC" } else { "Europe/London" })
                    .job(JobSpec::new("noop"));
                engine.create_schedule(spec).await
            }
        })
        .buffer_unordered(s.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("cannot create the schedules")?;
    let created = started.elapsed();

    let mut events = engine.subscribe().await?;
    let period_ms = s.period.as_millis() as i64;
    let first = chrono::Utc::now().timestamp_millis() + 2000;
    let step = period_ms as f64 / s.firing as f64;
    futures::stream::iter(0..s.firing)
        .map(|i| {
            let engine = engine.clone();
            let start_at = first + (i as f64 * step) as i64;
            async move {
                let spec =
                    ScheduleSpec::every_from(Duration::from_millis(period_ms as u64), start_at)
                        .id(format!("firing-{i:06}"))
                        .job(JobSpec::new("noop"));
                engine.create_schedule(spec).await
            }
        })
        .buffer_unordered(s.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("cannot create the firing schedules")?;
    if chrono::Utc::now().timestamp_millis() > first {
        bail!("creating the firing schedules took longer than 2 s; lower --firing");
    }

    let fires = s.firing * s.rounds;
    let mut late_us: Vec<i64> = Vec::with_capacity(fires);
    let deadline = Instant::now() + s.period * (s.rounds as u32 + 1) + Duration::from_secs(10);
    while late_us.len() < fires {
        let e = tokio::time::timeout_at(deadline.into(), events.next())
            .await
            .with_context(|| format!("only {} of {fires} fires came", late_us.len()))?
            .context("the engine closed")?;
        let received = chrono::Utc::now();
        if e.kind != EventKind::ScheduleFired {
            continue;
        }
        // Only this run's schedules count (a reused --db may hold others).
        if !e.data["schedule_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("firing-"))
        {
            continue;
        }
        let Some(at) = e.data["scheduled_for"]
            .as_str()
            .and_then(baton_core::time::parse_rfc3339)
        else {
            bail!("a fire has no scheduled time: {}", e.data);
        };
        if e.data["action"] != "created" {
            bail!("a fire did not submit its job: {}", e.data);
        }
        late_us.push(received.timestamp_micros() - at * 1000);
    }

    // Nothing is due for hours now: what does the engine cost at rest?
    for i in 0..s.firing {
        engine.pause_schedule(&format!("firing-{i:06}")).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (t0, c0) = (Instant::now(), bench_proc::cpu_ticks()?);
    tokio::time::sleep(s.idle).await;
    let (wall, cpu) = (t0.elapsed(), bench_proc::cpu_ticks()? - c0);
    let idle_cpu_pct = cpu as f64 / bench_proc::TICKS_PER_S / wall.as_secs_f64() * 100.0;
    let rss_mb = bench_proc::rss_mb()?;
    engine.shutdown(Duration::from_secs(5)).await;

    late_us.sort_unstable();
    let pct = |p: f64| {
        let i = ((late_us.len() as f64 * p).ceil() as usize).clamp(1, late_us.len()) - 1;
        late_us[i] as f64 / 1000.0
    };
    Ok(json!({
        "bench": "scheduler",
        "schedules": s.schedules,
        "firing": s.firing,
        "period_ms": period_ms,
        "rounds": s.rounds,
        "durability": durability,
        "fires": fires,
        "create_per_s": (far as f64 / created.as_secs_f64().max(1e-9)).round(),
        "lateness_p50_ms": pct(0.50),
        "lateness_p99_ms": pct(0.99),
        "lateness_max_ms": pct(1.0),
        "idle_window_ms": wall.as_millis() as u64,
        "idle_cpu_pct": (idle_cpu_pct * 1000.0).round() / 1000.0,
        "rss_mb": rss_mb,
    }))
}
