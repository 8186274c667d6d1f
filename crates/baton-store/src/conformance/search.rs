//! Conformance tests for the job list's free-text search and its orders.

use std::collections::BTreeSet;
use std::sync::Arc;

use baton_core::{ErrorInfo, EventKind, JobSpec, Millis, State};

use super::{T0, claim, claim_one, ids_of, list, page, submit};
use crate::{Changes, Error, JobFilter, JobSort, Store, Transition};

fn text(t: &str) -> JobFilter {
    JobFilter {
        text: Some(t.into()),
        ..JobFilter::default()
    }
}

async fn found(s: &dyn Store, t: &str) -> Vec<String> {
    let p = list(s, text(t), 100).await;
    assert!(p.total_exact, "{t:?}");
    assert_eq!(p.total, p.jobs.len() as u64, "{t:?}");
    ids_of(&p).into_iter().map(str::to_owned).collect()
}

/// Text finds the words of an id (and its last characters), a kind, a label (written
/// `key:value` or `key=value`) and an error's code or message, words starting with a
/// term of 3 characters or more, follows the error as it changes, and takes whatever
/// a person types as words, never as query syntax.
pub async fn list_text_finds_ids_kinds_labels_and_errors(store: Arc<dyn Store>) {
    let s = &*store;
    let jobs = [
        ("0190f8a2-3b4c-7d5e-8f9a-0b1c2d3e4f5a", "scrape", "alfabeta"),
        ("0190f8a2-3b4c-7d5e-8f9a-77aa88bb99cc", "encode", "beta"),
        ("report-2024.q1", "report", "gamma"),
    ];
    for (i, (id, kind, source)) in jobs.into_iter().enumerate() {
        let spec = JobSpec::new(kind)
            .id(id)
            .queue(kind)
            .label("source", source)
            .label("note", r#"a*-x OR:y "hi" NEAR(z"#);
        submit(s, spec, T0 + i as Millis).await;
    }
    let (scrape, encode, report) = (jobs[0].0, jobs[1].0, jobs[2].0);
    assert_eq!(
        found(s, "2d3e4f5a").await,
        [scrape],
        "an id's last 8 characters"
    );
    assert_eq!(found(s, "3e4f5a").await, [scrape], "its last 6");
    assert_eq!(found(s, "4f5a").await, [scrape], "its last 4");
    assert_eq!(
        found(s, "0190F8A2").await,
        [encode, scrape],
        "a part, any case"
    );
    assert_eq!(
        found(s, "0190f8a2-3b4c").await,
        [encode, scrape],
        "its start"
    );
    assert_eq!(found(s, "encode").await, [encode], "a kind");
    assert_eq!(found(s, "enc").await, [encode], "a word's start");
    assert_eq!(found(s, "source:alfabeta").await, [scrape], "a label");
    assert_eq!(found(s, "source=alfabeta").await, [scrape], "key=value too");
    assert_eq!(found(s, "source:alf").await, [scrape], "a label's start");
    assert_eq!(
        found(s, "beta").await,
        [encode],
        "a whole value, not inside one"
    );
    assert_eq!(found(s, "beta 77aa").await, [encode], "every term matches");
    assert_eq!(found(s, "report-2024.q1").await, [report]);
    assert_eq!(found(s, "q1").await, [report], "a short word, whole");
    assert!(found(s, "q").await.is_empty(), "a short term is no prefix");

    // Fails with an error: found by its message and code, until a retry clears it.
    let c = claim_one(s, "encode", T0 + 10).await;
    let error = ErrorInfo::new("fetch_timeout", "timeout fetching page 7");
    s.transition(
        Transition::new(encode, State::Failed, EventKind::Failed, T0 + 20)
            .fence(c.fence)
            .changes(Changes {
                error: Some(error),
                ..Changes::default()
            }),
    )
    .await
    .expect("fail");
    assert_eq!(found(s, "fetching").await, [encode], "an error word");
    assert_eq!(found(s, "fetch_timeout").await, [encode], "an error code");
    s.transition(
        Transition::new(encode, State::Queued, EventKind::Retrying, T0 + 30).changes(Changes {
            new_attempt_budget: true,
            ..Changes::default()
        }),
    )
    .await
    .expect("retry");
    assert!(found(s, "fetching").await.is_empty(), "the error is gone");
    assert_eq!(found(s, "encode").await, [encode], "the rest stays found");

    // FTS5 syntax is words: quotes, `*`, `-`, `OR`, `:` and `NEAR(` are not obeyed.
    for typed in [
        r#""hi""#,
        "a*-x",
        "OR:y",
        "NEAR(z",
        r#"a*-x OR:y "hi""#,
        "note:a*",
    ] {
        assert_eq!(found(s, typed).await.len(), 3, "{typed:?}");
    }
    for typed in ["NOT AND", "col:umn", "x*y", "z-NEAR"] {
        assert!(found(s, typed).await.is_empty(), "{typed:?}");
    }

    // No word to look for: refused, not answered wrongly.
    for bare in ["*-*", r#"fetching """#, "  ", "'''"] {
        match s
            .list(JobFilter {
                limit: 10,
                ..text(bare)
            })
            .await
        {
            Err(Error::Config(msg)) => assert!(
                msg.contains("has no letter or digit") || msg.contains("empty"),
                "{bare:?}: {msg}"
            ),
            other => panic!("{bare:?}: {other:?}"),
        }
    }
}

/// Each order pages newest first by its time (ties by creation), lists only jobs that
/// have that time, and visits every such job exactly once while jobs are added,
/// started and finished between pages.
pub async fn list_orders_page_every_job_once_while_jobs_arrive(store: Arc<dyn Store>) {
    let s = &*store;
    // Twelve jobs; claimed in priority order (not creation order), two at a time at
    // the same instant; finished in yet another order, some at the same instant.
    let n = 12;
    for i in 0..n {
        let spec = JobSpec::new("task")
            .id(format!("job-{i:02}"))
            .priority(i * 7 % n);
        submit(s, spec, T0 + i as Millis).await;
    }
    let mut claimed = Vec::new();
    for round in 0..5 {
        claimed.extend(claim(s, "default", 2, T0 + 100 + round).await);
    }
    for (k, c) in claimed.iter().rev().take(6).enumerate() {
        let to = if k % 3 == 0 {
            State::Failed
        } else {
            State::Completed
        };
        let event = if to == State::Failed {
            EventKind::Failed
        } else {
            EventKind::Completed
        };
        s.transition(
            Transition::new(c.job.id.as_str(), to, event, T0 + 200 + k as Millis / 2)
                .fence(c.fence),
        )
        .await
        .expect("finish");
    }
    let mut extra = 0;
    for sort in JobSort::ALL {
        let all = list(s, JobFilter::default(), 100).await.jobs;
        let time = |j: &baton_core::Job| match sort {
            JobSort::Created => Some(j.created_at),
            JobSort::Started => j.started_at,
            JobSort::Finished => j.finished_at,
        };
        // Newest first; the list by creation gives the tie-break (later created first).
        let mut expected: Vec<(Millis, usize, String)> = all
            .iter()
            .enumerate()
            .filter_map(|(pos, j)| time(j).map(|t| (t, pos, j.id.to_string())))
            .collect();
        expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let expected: Vec<String> = expected.into_iter().map(|e| e.2).collect();
        assert!(!expected.is_empty(), "{sort}");

        let filter = JobFilter {
            sort,
            ..JobFilter::default()
        };
        let mut seen = Vec::new();
        let mut p = list(s, filter.clone(), 3).await;
        loop {
            seen.extend(ids_of(&p).into_iter().map(str::to_owned));
            if p.next_cursor.is_none() {
                break;
            }
            // A newcomer, started and finished: newest in every order, so not on a
            // later page, and no job moves.
            extra += 1;
            let id = format!("late-{sort}-{extra}");
            let at = T0 + 1_000 * extra;
            submit(s, JobSpec::new("task").id(&id).queue("late"), at).await;
            let c = claim_one(s, "late", at).await;
            s.transition(
                Transition::new(&id, State::Completed, EventKind::Completed, at).fence(c.fence),
            )
            .await
            .expect("complete");
            p = list(s, page(filter.clone(), &p), 3).await;
        }
        assert_eq!(seen, expected, "sort={sort}");
        let unique: BTreeSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "sort={sort}: no job twice");
        for j in s
            .list(JobFilter {
                limit: 1000,
                sort,
                ..JobFilter::default()
            })
            .await
            .expect("list")
            .jobs
        {
            assert!(
                time(&j).is_some(),
                "sort={sort} lists only jobs with that time"
            );
        }
        // A cursor of this order is refused by another.
        let mid = list(s, filter.clone(), 1).await;
        let another = JobSort::ALL
            .into_iter()
            .find(|o| *o != sort)
            .expect("another order");
        let wrong = JobFilter {
            sort: another,
            limit: 5,
            ..page(filter.clone(), &mid)
        };
        match s.list(wrong).await {
            Err(Error::Config(msg)) => {
                assert!(msg.contains(&format!("belongs to sort={sort}")), "{msg}")
            }
            other => panic!(
                "a cursor of sort={sort} given with sort={another}: {:?}",
                other.map(|p| p.jobs.len())
            ),
        }
    }
}
