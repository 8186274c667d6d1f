//! Schema migrations, tracked in `PRAGMA user_version`.

use rusqlite::Connection;

use crate::{Error, Result};

const MIGRATIONS: &[&str] = &[
    // 1: jobs, events, checkpoints, servers.
    r#"
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        state TEXT NOT NULL,
        payload TEXT,
        exec TEXT,
        labels TEXT,
        progress REAL,
        message TEXT,
        step TEXT,
        attempt INTEGER NOT NULL DEFAULT 0,
        attempt_base INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        backoff_initial_ms INTEGER NOT NULL,
        backoff_max_ms INTEGER NOT NULL,
        timeout_ms INTEGER,
        grace_ms INTEGER NOT NULL,
        recoveries INTEGER NOT NULL DEFAULT 0,
        max_recoveries INTEGER NOT NULL,
        fence INTEGER NOT NULL DEFAULT 0,
        server_id TEXT,
        event_seq INTEGER NOT NULL DEFAULT 0,
        checkpoint TEXT,
        workflow_id TEXT,
        schedule_id TEXT,
        created_at INTEGER NOT NULL,
        run_at INTEGER,
        started_at INTEGER,
        finished_at INTEGER,
        updated_at INTEGER NOT NULL,
        result TEXT,
        error_code TEXT,
        error_message TEXT
    );
    -- Claiming reads the head of this partial index: cheap however many jobs are stored.
    CREATE INDEX jobs_claim ON jobs (queue, priority DESC, seq) WHERE state = 'queued';
    CREATE INDEX jobs_due ON jobs (run_at) WHERE state = 'scheduled';
    CREATE INDEX jobs_state ON jobs (state, seq);

    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        job_key INTEGER,
        job_id TEXT,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        at INTEGER NOT NULL,
        data TEXT NOT NULL
    );
    -- A job's events, by the job's row key (an integer compares faster than its id).
    CREATE INDEX events_job ON events (job_key, seq) WHERE job_key IS NOT NULL;

    CREATE TABLE checkpoints (
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        step TEXT,
        data TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (job_id, seq)
    ) WITHOUT ROWID;

    CREATE TABLE servers (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        url TEXT,
        started_at INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL,
        stopped_at INTEGER,
        queues TEXT NOT NULL,
        workers INTEGER NOT NULL
    );
    "#,
    // 2: command jobs: captured logs, the process group of the running attempt, and
    // stored pipeline definitions.
    r#"
    ALTER TABLE jobs ADD COLUMN log_lines INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN log_full INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN pgid INTEGER;
    ALTER TABLE jobs ADD COLUMN proc_start INTEGER;

    CREATE TABLE logs (
        job_key INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        stream TEXT NOT NULL,
        line TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (job_key, seq)
    ) WITHOUT ROWID;

    CREATE TABLE pipelines (
        id TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 3: schedules and their fire history.
    r#"
    -- AUTOINCREMENT: a key is never reused, so a schedule deleted and created again
    -- under the same id has a new revision (key and version) that no stale fire matches.
    CREATE TABLE schedules (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        spec TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        next_run INTEGER,
        last_run INTEGER,
        run_count INTEGER NOT NULL DEFAULT 0,
        fire_seq INTEGER NOT NULL DEFAULT 0,
        version INTEGER NOT NULL DEFAULT 1,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );

    CREATE TABLE schedule_fires (
        schedule_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        scheduled_for INTEGER NOT NULL,
        fired_at INTEGER NOT NULL,
        reason TEXT NOT NULL,
        action TEXT NOT NULL,
        job_id TEXT,
        message TEXT,
        PRIMARY KEY (schedule_id, seq)
    ) WITHOUT ROWID;

    -- Jobs of a schedule (list filter), and its active ones (overlap policies): a
    -- schedule's old jobs pile up, its active ones are few.
    CREATE INDEX jobs_schedule ON jobs (schedule_id, seq) WHERE schedule_id IS NOT NULL;
    CREATE INDEX jobs_schedule_active ON jobs (schedule_id, seq)
        WHERE schedule_id IS NOT NULL
        AND state NOT IN ('completed', 'failed', 'cancelled', 'deleted');
    "#,
    // 4: dependencies, workflows, unique keys and paused queues.
    r#"
    -- Edges by the jobs' integer keys: `child` waits for `parent`. `cond`: 0 completed,
    -- 1 failed, 2 finished; `status`: 0 waiting, 1 met, 2 never.
    CREATE TABLE deps (
        child INTEGER NOT NULL,
        parent INTEGER NOT NULL,
        cond INTEGER NOT NULL,
        status INTEGER NOT NULL,
        PRIMARY KEY (child, parent)
    ) WITHOUT ROWID;
    -- The dependents of a job, read when it ends. Without `status`: an edge's status
    -- changes once, and an index entry would have to move with it.
    CREATE INDEX deps_parent ON deps (parent);

    -- An awaiting job's waiting edges: it is queued when the last one is met.
    ALTER TABLE jobs ADD COLUMN deps_pending INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN workflow_name TEXT;
    ALTER TABLE jobs ADD COLUMN unique_key TEXT;
    -- At most one active job holds a key: the store refuses a second in the same write.
    CREATE UNIQUE INDEX jobs_unique ON jobs (unique_key)
        WHERE unique_key IS NOT NULL
        AND state NOT IN ('completed', 'failed', 'cancelled', 'deleted');
    CREATE INDEX jobs_workflow ON jobs (workflow_id, seq) WHERE workflow_id IS NOT NULL;

    CREATE TABLE workflows (
        id TEXT PRIMARY KEY,
        paused INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE queues (
        name TEXT PRIMARY KEY,
        paused INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 5: jobs per queue and state, kept by the writer in the transaction of every
    // change of state, so that counting a million jobs reads a few rows.
    r#"
    CREATE TABLE job_counts (
        queue TEXT NOT NULL,
        state TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (queue, state)
    ) WITHOUT ROWID;
    INSERT INTO job_counts (queue, state, n)
        SELECT queue, state, COUNT(*) FROM jobs GROUP BY queue, state;
    "#,
    // 6: the jobs of each label, so that a label filter reads the jobs it matches
    // rather than every job's labels.
    r#"
    CREATE TABLE job_labels (
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        job INTEGER NOT NULL,
        PRIMARY KEY (key, value, job)
    ) WITHOUT ROWID;
    INSERT INTO job_labels (key, value, job)
        SELECT l.key, l.value, jobs.seq FROM jobs, json_each(jobs.labels) AS l
        WHERE jobs.labels IS NOT NULL;
    "#,
    // 7: the job list's search and orders. `job_text` indexes the words of a job's
    // id (and its last 4, 6 and 8 characters as words of their own), kind, labels
    // and error (unicode61: a word is a run of letters and digits), so that a search
    // reads the jobs it matches. Its text is the view `job_text_source` (external
    // content: not stored twice). New jobs are indexed behind the writes, not in the
    // submit's transaction: `job_text_mark.upto` is the last job indexed, the writer
    // indexes the jobs after it in batches when it has nothing else to do, and a
    // search first brings the index up to date. The triggers keep indexed jobs in
    // step (an error set, a row deleted), reading the view before a change to remove
    // exactly what was indexed. No trigger runs on insert: even one whose condition is
    // false costs a submit about a fifth of its speed. Job rows are never deleted
    // today; a purge that deletes the newest row would let SQLite give its key to the
    // next job, under the mark, unindexed, so it must keep the newest row. Kind,
    // queue, start and end get indexes for their filter and orders.
    r#"
    CREATE VIEW job_text_source (seq, body) AS
        SELECT seq, id || ' ' || substr(id, -8) || ' ' || substr(id, -6) || ' '
            || substr(id, -4) || ' ' || kind
            || COALESCE(' ' || (SELECT group_concat(l.key || ':' || l.value, ' ')
                FROM json_each(jobs.labels) AS l), '')
            || COALESCE(' ' || error_code, '') || COALESCE(' ' || error_message, '')
        FROM jobs;
    CREATE VIRTUAL TABLE job_text USING fts5 (
        body, content = 'job_text_source', content_rowid = 'seq', tokenize = 'unicode61'
    );
    INSERT INTO job_text (rowid, body) SELECT seq, body FROM job_text_source;
    CREATE TABLE job_text_mark (upto INTEGER NOT NULL);
    INSERT INTO job_text_mark (upto) SELECT COALESCE(MAX(seq), 0) FROM jobs;
    CREATE TRIGGER job_text_unindex BEFORE UPDATE OF error_code, error_message ON jobs
        WHEN (old.error_code IS NOT new.error_code OR old.error_message IS NOT new.error_message)
            AND old.seq <= (SELECT upto FROM job_text_mark)
    BEGIN
        INSERT INTO job_text (job_text, rowid, body) SELECT 'delete', seq, body
            FROM job_text_source WHERE seq = old.seq;
    END;
    CREATE TRIGGER job_text_reindex AFTER UPDATE OF error_code, error_message ON jobs
        WHEN (old.error_code IS NOT new.error_code OR old.error_message IS NOT new.error_message)
            AND new.seq <= (SELECT upto FROM job_text_mark)
    BEGIN
        INSERT INTO job_text (rowid, body) SELECT seq, body FROM job_text_source
            WHERE seq = new.seq;
    END;
    CREATE TRIGGER job_text_delete BEFORE DELETE ON jobs
        WHEN old.seq <= (SELECT upto FROM job_text_mark)
    BEGIN
        INSERT INTO job_text (job_text, rowid, body) SELECT 'delete', seq, body
            FROM job_text_source WHERE seq = old.seq;
    END;
    CREATE INDEX jobs_kind ON jobs (kind, seq);
    CREATE INDEX jobs_queue ON jobs (queue, seq);
    CREATE INDEX jobs_started ON jobs (started_at, seq) WHERE started_at IS NOT NULL;
    CREATE INDEX jobs_finished ON jobs (finished_at, seq) WHERE finished_at IS NOT NULL;
    "#,
    // 8: jobs completed and failed per queue and bucket (a second for the last 15
    // minutes, a minute for the last day), kept by the writer in the transaction that
    // ends each job, filled here from the jobs that ended within those spans; and the
    // workflows by creation, for their newest-first list.
    r#"
    CREATE TABLE throughput (
        span INTEGER NOT NULL,
        at INTEGER NOT NULL,
        queue TEXT NOT NULL,
        completed INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        PRIMARY KEY (span, at, queue)
    ) WITHOUT ROWID;
    INSERT INTO throughput (span, at, queue, completed, failed)
        SELECT 60000, finished_at / 60000 * 60000, queue,
            SUM(state = 'completed'), SUM(state = 'failed')
        FROM jobs
        WHERE state IN ('completed', 'failed') AND finished_at IS NOT NULL
            AND finished_at >= (CAST(strftime('%s', 'now') AS INTEGER) / 60 - 1440) * 60000
        GROUP BY 2, 3;
    INSERT INTO throughput (span, at, queue, completed, failed)
        SELECT 1000, finished_at / 1000 * 1000, queue,
            SUM(state = 'completed'), SUM(state = 'failed')
        FROM jobs
        WHERE state IN ('completed', 'failed') AND finished_at IS NOT NULL
            AND finished_at >= (CAST(strftime('%s', 'now') AS INTEGER) / 60 - 15) * 60000
        GROUP BY 2, 3;
    CREATE INDEX workflows_created ON workflows (created_at, id);
    "#,
    // 9: retention. Finished jobs are pruned (with their events, logs, checkpoints,
    // labels and edges) once their queue's retention has passed, found in end order
    // through `jobs_finished`; `events_unowned` finds the old events of no job.
    // `prune_mark.events_upto` is the newest event id ever pruned: ids are never given
    // twice, even when the newest events are gone, and a reader that resumes before it
    // is told that events it may not have seen were pruned.
    // A schedule's fires older than the default retention go too, all but its
    // newest: `schedule_fires_at` finds them by time.
    r#"
    CREATE INDEX events_unowned ON events (at) WHERE job_key IS NULL;
    CREATE INDEX schedule_fires_at ON schedule_fires (fired_at);
    CREATE TABLE prune_mark (events_upto INTEGER NOT NULL);
    INSERT INTO prune_mark (events_upto) VALUES (0);
    "#,
    // 10: what a command or pipeline job's processes used (CPU time, resident memory
    // now and at its peak), as JSON, written with its `job.usage` events and its end.
    r#"
    ALTER TABLE jobs ADD COLUMN usage TEXT;
    "#,
];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database up to [`VERSION`], one transaction per migration.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > VERSION {
        return Err(Error::Config(format!(
            "the database has schema version {current}, newer than this Baton knows ({VERSION}); upgrade Baton"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
