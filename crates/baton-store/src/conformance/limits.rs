//! Conformance: concurrency limits by label and kind across queues, and the turns
//! queues take at a full limit.

use std::sync::Arc;

use baton_core::{ConcurrencyLimit, EventKind, JobSpec, Millis, State};

use super::{SERVER, T0, claim, get, ids, new_job, submit};
use crate::turns::TURN_TTL;
use crate::{ClaimRequest, StartNow, Store, Transition};

fn x(id: &str, queue: &str) -> JobSpec {
    JobSpec::new("work")
        .id(id)
        .queue(queue)
        .label("source", "x")
}

async fn complete(s: &dyn Store, id: &str, now: Millis) {
    let job = get(s, id).await;
    assert_eq!(job.state, State::Running, "{id} runs");
    let fence = s
        .job_events(id, 0, 100)
        .await
        .expect("events")
        .iter()
        .filter(|e| e.kind == EventKind::Started)
        .count() as u64;
    s.record(Transition::new(id, State::Completed, EventKind::Completed, now).fence(fence))
        .await
        .expect("complete");
}

/// A limit holds its jobs across queues, a kind limit likewise, jobs it does not cover
/// pass, a paused job keeps its slot, and a remote worker's claim obeys the same limits.
pub async fn concurrency_limits_hold_covered_jobs_across_queues(store: Arc<dyn Store>) {
    let s = &*store;
    let limits = vec![
        ConcurrencyLimit::label("source", "x", 2),
        ConcurrencyLimit::kind("render", 1),
    ];
    s.set_concurrency_limits(limits.clone());
    let specs = [
        x("a1", "a"),
        x("a2", "a"),
        x("a3", "a"),
        JobSpec::new("work").id("a-free").queue("a"),
        x("b1", "b"),
        JobSpec::new("render").id("r1").queue("b"),
        JobSpec::new("render").id("r2").queue("c"),
        JobSpec::new("render")
            .id("r3")
            .queue("c")
            .label("source", "x"),
    ];
    for (i, spec) in specs.into_iter().enumerate() {
        submit(s, spec, T0 + i as Millis).await;
    }
    assert_eq!(s.concurrency_held(&limits).await.expect("held"), [0, 0]);
    assert_eq!(
        ids(&claim(s, "a", 10, T0 + 10).await),
        ["a1", "a2", "a-free"]
    );
    assert_eq!(s.concurrency_held(&limits).await.expect("held"), [2, 0]);
    assert_eq!(ids(&claim(s, "b", 10, T0 + 11).await), ["r1"]);
    assert_eq!(get(s, "b1").await.state, State::Queued);
    // A remote worker's claim (by kinds) is held to the same limits.
    let remote = s
        .claim(ClaimRequest {
            queue: "c".into(),
            limit: 10,
            server_id: "worker-1".into(),
            now: T0 + 12,
            kinds: Some(vec!["render".into()]),
        })
        .await
        .expect("claim");
    assert!(remote.is_empty(), "{:?}", ids(&remote));
    assert_eq!(s.concurrency_held(&limits).await.expect("held"), [2, 1]);

    // A paused job keeps its slot.
    let fence = 1;
    s.record(Transition::new("a1", State::Paused, EventKind::Paused, T0 + 13).fence(fence))
        .await
        .expect("pause");
    assert_eq!(s.concurrency_held(&limits).await.expect("held"), [2, 1]);
    assert!(claim(s, "b", 10, T0 + 14).await.is_empty());

    // The render slot frees: the next render job may start, but r3 also needs a slot of
    // source:x, which is still full.
    complete(s, "r1", T0 + 15).await;
    assert_eq!(ids(&claim(s, "c", 10, T0 + 16).await), ["r2"]);
    assert_eq!(get(s, "r3").await.state, State::Queued);
    assert_eq!(s.concurrency_held(&limits).await.expect("held"), [2, 1]);

    // Without limits, everything queued may start.
    s.set_concurrency_limits(Vec::new());
    assert_eq!(ids(&claim(s, "a", 10, T0 + 17).await), ["a3"]);
}

/// A slot that frees goes to the queue that has waited for it longest, not back to
/// the queue whose job ended; a queue that stops asking loses its place.
pub async fn a_freed_limit_slot_goes_to_the_queue_waiting_in_line(store: Arc<dyn Store>) {
    let s = &*store;
    s.set_concurrency_limits(vec![ConcurrencyLimit::label("source", "x", 1)]);
    for (i, id) in ["a1", "a2", "a3"].into_iter().enumerate() {
        submit(s, x(id, "a"), T0 + i as Millis).await;
    }
    for (i, id) in ["b1", "b2"].into_iter().enumerate() {
        submit(s, x(id, "b"), T0 + 5 + i as Millis).await;
    }
    assert_eq!(ids(&claim(s, "a", 4, T0 + 10).await), ["a1"]);
    // b finds the limit full with free slots of its own: it waits in line.
    assert!(claim(s, "b", 4, T0 + 11).await.is_empty());
    complete(s, "a1", T0 + 12).await;
    // a claims first, but b is in line before it.
    assert!(claim(s, "a", 4, T0 + 13).await.is_empty());
    assert_eq!(ids(&claim(s, "b", 4, T0 + 14).await), ["b1"]);
    complete(s, "b1", T0 + 15).await;
    // Now a is first in line (it asked at T0 + 13), and b is not.
    assert!(claim(s, "b", 4, T0 + 16).await.is_empty());
    assert_eq!(ids(&claim(s, "a", 4, T0 + 17).await), ["a2"]);
    complete(s, "a2", T0 + 18).await;
    // b waits in line but stops asking: past its turn's time, a may take the slot.
    let late = T0 + 16 + TURN_TTL + 1;
    assert_eq!(ids(&claim(s, "a", 4, late).await), ["a3"]);
    assert_eq!(get(s, "b2").await.state, State::Queued);
}

/// A job a limit covers is not started at submit: it waits for a claim, which takes
/// turns; the others start as before.
pub async fn submit_and_start_leaves_covered_jobs_to_a_claim(store: Arc<dyn Store>) {
    let s = &*store;
    s.set_concurrency_limits(vec![ConcurrencyLimit::label("source", "x", 5)]);
    let jobs = vec![
        new_job(x("covered", "default"), T0),
        new_job(JobSpec::new("work").id("free"), T0),
    ];
    let start = StartNow {
        server_id: SERVER.into(),
        max: 2,
    };
    let out = s.submit_and_start(jobs, start).await.expect("submit");
    assert!(out[0].claimed.is_none());
    assert_eq!(out[0].job.state, State::Queued);
    assert!(out[1].claimed.is_some());
    assert_eq!(ids(&claim(s, "default", 4, T0 + 1).await), ["covered"]);
}

/// Behind a long run of jobs whose limit fills during the claim, the claim still takes
/// the queue's other jobs, in order, and leaves the covered ones queued.
pub async fn a_claim_takes_other_jobs_past_a_full_limits_backlog(store: Arc<dyn Store>) {
    let s = &*store;
    s.set_concurrency_limits(vec![ConcurrencyLimit::label("source", "x", 2)]);
    let mut jobs = Vec::new();
    for n in 0..300 {
        jobs.push(new_job(x(&format!("x-{n:03}"), "default"), T0));
    }
    for n in 0..5 {
        jobs.push(new_job(JobSpec::new("work").id(format!("free-{n}")), T0));
    }
    s.submit(jobs).await.expect("submit");
    assert_eq!(
        ids(&claim(s, "default", 6, T0 + 1).await),
        ["x-000", "x-001", "free-0", "free-1", "free-2", "free-3"]
    );
    assert_eq!(ids(&claim(s, "default", 6, T0 + 2).await), ["free-4"]);
    assert_eq!(get(s, "x-002").await.state, State::Queued);
}

/// A job far behind a full limit's backlog (past the first jobs a claim looks at on
/// every call) is taken within a second of claims.
pub async fn a_job_behind_a_long_full_backlog_starts_within_a_second(store: Arc<dyn Store>) {
    let s = &*store;
    s.set_concurrency_limits(vec![ConcurrencyLimit::kind("render", 1)]);
    let mut jobs = Vec::new();
    for n in 0..1500 {
        jobs.push(new_job(JobSpec::new("render").id(format!("r-{n:04}")), T0));
    }
    s.submit(jobs).await.expect("submit");
    assert_eq!(ids(&claim(s, "default", 4, T0 + 1).await), ["r-0000"]);
    submit(s, JobSpec::new("work").id("late"), T0 + 2).await;
    let mut taken = Vec::new();
    for t in [T0 + 3, T0 + 500, T0 + 1100] {
        taken.extend(
            claim(s, "default", 4, t)
                .await
                .into_iter()
                .map(|c| c.job.id),
        );
    }
    assert_eq!(taken, ["late"]);
    assert_eq!(get(s, "r-0001").await.state, State::Queued);
}
