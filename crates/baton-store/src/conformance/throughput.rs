//! Conformance: jobs completed and failed per second and per minute, counted by the
//! write that ends each job.

use std::sync::Arc;

use baton_core::{ErrorInfo, EventKind, JobSpec, Millis, State};

use super::{T0, claim_one, submit};
use crate::{Changes, Error, Span, Store, ThroughputRow, Transition};

const MINUTE: Millis = 60_000;

/// The first second of the minute after T0, so that buckets are easy to name.
const M0: Millis = (T0 / MINUTE + 1) * MINUTE;

/// Runs a new job of `queue` to `to` (completed or failed) at `at`.
async fn end(s: &dyn Store, id: &str, queue: &str, to: State, at: Millis) {
    submit(
        s,
        JobSpec::new("work").id(id).queue(queue).max_attempts(1),
        at - 2,
    )
    .await;
    let c = claim_one(s, queue, at - 1).await;
    let (kind, changes) = if to == State::Completed {
        (EventKind::Completed, Changes::default())
    } else {
        let error = Some(ErrorInfo::new("handler_error", "boom"));
        (
            EventKind::Failed,
            Changes {
                error,
                ..Changes::default()
            },
        )
    };
    s.record(
        Transition::new(id, to, kind, at)
            .fence(c.fence)
            .changes(changes),
    )
    .await
    .unwrap_or_else(|e| panic!("end {id}: {e}"));
}

fn row(at: Millis, queue: &str, completed: u64, failed: u64) -> ThroughputRow {
    ThroughputRow {
        at,
        queue: queue.into(),
        completed,
        failed,
    }
}

async fn read(s: &dyn Store, span: Span, since: Millis) -> Vec<ThroughputRow> {
    s.throughput(span, since).await.expect("throughput")
}

/// Completions and failures are counted per queue in the bucket of the time they
/// ended, in seconds and in minutes; a refused end counts nothing; a job that ends
/// again after a retry counts again; old buckets go once a write is past their keep.
pub async fn throughput_is_counted_per_second_and_minute_by_the_ending_write(
    store: Arc<dyn Store>,
) {
    let s = &*store;
    end(s, "a1", "a", State::Completed, M0 + 100).await;
    end(s, "a2", "a", State::Completed, M0 + 900).await;
    end(s, "a3", "a", State::Failed, M0 + 1_500).await;
    end(s, "b1", "b", State::Completed, M0 + 61_000).await;
    // A stale end (the job ended already) is refused and counts nothing.
    let stale = s
        .record(Transition::new("a1", State::Completed, EventKind::Completed, M0 + 2_000).fence(1))
        .await;
    assert!(matches!(stale, Err(Error::StaleFence { .. })), "{stale:?}");
    // Cancelled is not a completion, nor a failure.
    submit(s, JobSpec::new("work").id("c1").queue("a"), M0 + 3_000).await;
    s.transition(Transition::new(
        "c1",
        State::Cancelled,
        EventKind::Cancelled,
        M0 + 3_000,
    ))
    .await
    .expect("cancel");

    assert_eq!(
        read(s, Span::Second, M0).await,
        vec![
            row(M0, "a", 2, 0),
            row(M0 + 1_000, "a", 0, 1),
            row(M0 + 61_000, "b", 1, 0),
        ]
    );
    assert_eq!(
        read(s, Span::Minute, M0).await,
        vec![row(M0, "a", 2, 1), row(M0 + MINUTE, "b", 1, 0)]
    );
    assert_eq!(
        read(s, Span::Second, M0 + 1_000).await,
        vec![row(M0 + 1_000, "a", 0, 1), row(M0 + 61_000, "b", 1, 0)],
        "since names the first bucket read"
    );

    // A manual retry runs a3 again; its completion counts in its own second.
    s.transition(
        Transition::new("a3", State::Queued, EventKind::Queued, M0 + 62_000).changes(Changes {
            new_attempt_budget: true,
            ..Changes::default()
        }),
    )
    .await
    .expect("retry");
    let c = claim_one(s, "a", M0 + 62_500).await;
    s.record(
        Transition::new("a3", State::Completed, EventKind::Completed, M0 + 63_000).fence(c.fence),
    )
    .await
    .expect("complete");
    assert_eq!(
        read(s, Span::Minute, M0).await,
        vec![
            row(M0, "a", 2, 1),
            row(M0 + MINUTE, "a", 1, 0),
            row(M0 + MINUTE, "b", 1, 0)
        ]
    );

    // Sixteen minutes on, the first minute's seconds are gone and the minute stays;
    // a day on, the minute goes too.
    end(s, "late", "b", State::Completed, M0 + 16 * MINUTE).await;
    let seconds = read(s, Span::Second, 0).await;
    assert_eq!(
        seconds.first().map(|r| r.at),
        Some(M0 + 61_000),
        "{seconds:?}"
    );
    assert_eq!(
        read(s, Span::Minute, 0).await.first().map(|r| r.at),
        Some(M0)
    );
    end(s, "next-day", "b", State::Failed, M0 + 1_442 * MINUTE).await;
    assert_eq!(
        read(s, Span::Minute, 0).await,
        vec![
            row(M0 + 16 * MINUTE, "b", 1, 0),
            row(M0 + 1_442 * MINUTE, "b", 0, 1)
        ]
    );
    assert_eq!(
        read(s, Span::Second, 0).await,
        vec![row(M0 + 1_442 * MINUTE, "b", 0, 1)]
    );
}
