//! Schema migrations, tracked in `baton_schema.version` and run under an advisory lock,
//! so that servers starting together on one database apply each migration once.

use tokio_postgres::Client;

use crate::{Db, LOCK_MIGRATE};
use baton_store::{Error, Result};

const MIGRATIONS: &[&str] = &[
    // 1: jobs and everything a job keeps, events with their sequencing, servers,
    // schedules and their fire history, dependencies and workflows.
    //
    // `jobs` is partitioned by state: `jobs_live` holds the jobs that can still change
    // on their own (scheduled, awaiting, queued, executing, crashed) and `jobs_done`
    // the ended ones. The write that ends a job moves its row (PostgreSQL moves a row
    // whose partition key changes), so claims, the rescuer and vacuum work on a table
    // the size of the backlog, not of the history, which retention prunes. A reader
    // of `jobs` sees both.
    //
    // `jobs_live` takes every claim and outcome. A fillfactor of 80 leaves room in
    // each page for an updated row's new version (a HOT update, which writes no index
    // entry, for progress, steps and checkpoints), and autovacuum runs after 2 % of
    // its rows changed (the default 20 % lets a busy queue pile up dead versions that
    // every claim then walks past). `jobs_done` is appended to and pruned: packed
    // pages, the default autovacuum.
    //
    // A job id is unique across both, which no index of a partitioned table can
    // promise (its unique indexes must hold the partition key): `job_ids` holds them.
    r#"
    CREATE TABLE job_ids (id TEXT PRIMARY KEY);
    CREATE SEQUENCE jobs_key_seq;
    CREATE TABLE jobs (
        key BIGINT NOT NULL DEFAULT nextval('jobs_key_seq'),
        id TEXT NOT NULL,
        kind TEXT NOT NULL,
        queue TEXT NOT NULL,
        priority INT NOT NULL,
        state TEXT NOT NULL,
        payload JSONB,
        exec JSONB,
        labels JSONB,
        progress DOUBLE PRECISION,
        message TEXT,
        step TEXT,
        attempt INT NOT NULL DEFAULT 0,
        attempt_base INT NOT NULL DEFAULT 0,
        max_attempts INT NOT NULL,
        backoff_initial_ms BIGINT NOT NULL,
        backoff_max_ms BIGINT NOT NULL,
        timeout_ms BIGINT,
        grace_ms BIGINT NOT NULL,
        recoveries INT NOT NULL DEFAULT 0,
        max_recoveries INT NOT NULL,
        fence BIGINT NOT NULL DEFAULT 0,
        server_id TEXT,
        event_seq BIGINT NOT NULL DEFAULT 0,
        checkpoint JSONB,
        workflow_id TEXT,
        workflow_name TEXT,
        schedule_id TEXT,
        unique_key TEXT,
        deps_pending INT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        run_at BIGINT,
        started_at BIGINT,
        finished_at BIGINT,
        updated_at BIGINT NOT NULL,
        result JSONB,
        error_code TEXT,
        error_message TEXT,
        log_lines BIGINT NOT NULL DEFAULT 0,
        log_full BOOLEAN NOT NULL DEFAULT false,
        pgid INT,
        proc_start BIGINT,
        -- The words the list's text search finds (see `search.rs`).
        search TSVECTOR NOT NULL
    ) PARTITION BY LIST (state);
    ALTER SEQUENCE jobs_key_seq OWNED BY jobs.key;
    CREATE TABLE jobs_live PARTITION OF jobs (PRIMARY KEY (key))
        FOR VALUES IN ('scheduled', 'awaiting', 'queued', 'running', 'paused', 'stopping',
                       'crashed')
        WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02,
              autovacuum_analyze_scale_factor = 0.02);
    CREATE TABLE jobs_done PARTITION OF jobs (PRIMARY KEY (key))
        FOR VALUES IN ('completed', 'failed', 'cancelled', 'deleted');
    CREATE INDEX jobs_id ON jobs (id);
    CREATE INDEX jobs_state ON jobs (state, key);
    CREATE INDEX jobs_kind ON jobs (kind, key);
    CREATE INDEX jobs_queue ON jobs (queue, key);
    CREATE INDEX jobs_search ON jobs USING gin (search);
    CREATE INDEX jobs_labels ON jobs USING gin (labels jsonb_path_ops) WHERE labels IS NOT NULL;
    -- Jobs of a schedule (list filter) and of a workflow (retention removes a workflow
    -- whole).
    CREATE INDEX jobs_schedule ON jobs (schedule_id, key) WHERE schedule_id IS NOT NULL;
    CREATE INDEX jobs_workflow ON jobs (workflow_id, key) WHERE workflow_id IS NOT NULL;
    -- Claims read the head of this partial index: only ready jobs are in it.
    CREATE INDEX jobs_claim ON jobs_live (queue, priority DESC, key) WHERE state = 'queued';
    CREATE INDEX jobs_due ON jobs_live (run_at) WHERE state = 'scheduled';
    CREATE INDEX jobs_executing ON jobs_live (server_id)
        WHERE state IN ('running', 'paused', 'stopping');
    -- A unique key binds the jobs that have not ended, all of them here.
    CREATE UNIQUE INDEX jobs_unique ON jobs_live (unique_key) WHERE unique_key IS NOT NULL;
    -- A schedule's active jobs (overlap policies).
    CREATE INDEX jobs_schedule_active ON jobs_live (schedule_id, key)
        WHERE schedule_id IS NOT NULL;
    -- Retention goes by age of end.
    CREATE INDEX jobs_finished ON jobs_done (finished_at, key);

    -- Edges by the jobs' row keys: `child` waits for `parent` to end so that `cond`
    -- ('completed', 'failed', 'finished') holds; `status`: 0 waiting, 1 met, 2 never.
    -- An awaiting job counts its waiting edges in `jobs.deps_pending`.
    CREATE TABLE edges (
        child BIGINT NOT NULL,
        parent BIGINT NOT NULL,
        cond TEXT NOT NULL,
        status SMALLINT NOT NULL,
        PRIMARY KEY (child, parent)
    );
    -- The dependents of a job, read when it ends.
    CREATE INDEX edges_parent ON edges (parent);

    -- The id sorts by its bytes ("C"), as the SQLite store lists it.
    CREATE TABLE workflows (
        id TEXT COLLATE "C" PRIMARY KEY,
        paused BOOLEAN NOT NULL DEFAULT false,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE INDEX workflows_created ON workflows (created_at, id);

    -- `lid` orders a transaction's events; `xid` is the writing transaction. The
    -- sequencer gives `id` (the public, dense, global order) to the events of
    -- transactions older than every running one, ordered by (xid, lid).
    CREATE TABLE events (
        lid BIGSERIAL PRIMARY KEY,
        xid XID8 NOT NULL DEFAULT pg_current_xact_id(),
        id BIGINT UNIQUE,
        job_key BIGINT,
        job_id TEXT,
        job_seq BIGINT NOT NULL,
        type TEXT NOT NULL,
        at BIGINT NOT NULL,
        data JSONB NOT NULL
    );
    CREATE INDEX events_unsequenced ON events (xid, lid) WHERE id IS NULL;
    CREATE INDEX events_job ON events (job_key, job_seq) WHERE job_key IS NOT NULL;
    -- Events of no job (a server's, a queue's, a schedule's) go by age.
    CREATE INDEX events_unowned ON events (at) WHERE job_key IS NULL;

    -- The last id the sequencer gave, and the horizon it gave it under: every event
    -- of a transaction with an xid below it has its id.
    CREATE TABLE sequence_mark (
        upto BIGINT NOT NULL,
        horizon XID8 NOT NULL,
        pruned_upto BIGINT NOT NULL
    );
    INSERT INTO sequence_mark VALUES (0, '0', 0);

    -- Jobs per queue and state, as changes (+1, -1) that each write appends and that
    -- are folded together in the background: no write waits on another's count row.
    CREATE TABLE job_counts (
        queue TEXT NOT NULL,
        state TEXT NOT NULL,
        n BIGINT NOT NULL,
        xid XID8 NOT NULL DEFAULT pg_current_xact_id()
    );

    CREATE TABLE checkpoints (
        job_key BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        attempt INT NOT NULL,
        step TEXT,
        data JSONB NOT NULL,
        at BIGINT NOT NULL,
        PRIMARY KEY (job_key, seq)
    );

    CREATE TABLE logs (
        job_key BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        attempt INT NOT NULL,
        stream TEXT NOT NULL,
        line TEXT NOT NULL,
        at BIGINT NOT NULL,
        PRIMARY KEY (job_key, seq)
    );

    CREATE TABLE servers (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INT NOT NULL,
        url TEXT,
        started_at BIGINT NOT NULL,
        heartbeat_at BIGINT NOT NULL,
        stopped_at BIGINT,
        queues JSONB NOT NULL,
        workers INT NOT NULL,
        -- The last heartbeat by the database's clock: servers' clocks may disagree.
        alive_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );

    -- The leader lease: one row, held by a server until it expires (database time);
    -- the term grows each time it changes hands.
    CREATE TABLE leader (
        one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
        server_id TEXT NOT NULL,
        term BIGINT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );

    CREATE TABLE pipelines (
        id TEXT PRIMARY KEY,
        spec JSONB NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );

    CREATE TABLE queues (
        name TEXT PRIMARY KEY,
        paused BOOLEAN NOT NULL,
        updated_at BIGINT NOT NULL
    );

    -- Completions and failures per bucket, appended by the writes that end jobs and
    -- folded together in the background, as `job_counts`.
    CREATE TABLE throughput (
        span BIGINT NOT NULL,
        at BIGINT NOT NULL,
        queue TEXT NOT NULL,
        completed BIGINT NOT NULL,
        failed BIGINT NOT NULL
    );
    CREATE INDEX throughput_at ON throughput (span, at);

    -- An identity key is never reused, so a schedule deleted and created again under
    -- the same id has a new revision (key and version) that no stale fire matches.
    -- The id sorts and compares by its bytes ("C"), as the SQLite store lists it.
    CREATE TABLE schedules (
        key BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT COLLATE "C" NOT NULL UNIQUE,
        spec JSONB NOT NULL,
        enabled BOOLEAN NOT NULL,
        next_run BIGINT,
        last_run BIGINT,
        run_count BIGINT NOT NULL DEFAULT 0,
        fire_seq BIGINT NOT NULL DEFAULT 0,
        version BIGINT NOT NULL DEFAULT 1,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );

    CREATE TABLE schedule_fires (
        schedule_id TEXT COLLATE "C" NOT NULL,
        seq BIGINT NOT NULL,
        scheduled_for BIGINT NOT NULL,
        fired_at BIGINT NOT NULL,
        reason TEXT NOT NULL,
        action TEXT NOT NULL,
        job_id TEXT,
        message TEXT,
        PRIMARY KEY (schedule_id, seq)
    );
    -- Fires go by age (each schedule's newest stays).
    CREATE INDEX schedule_fires_at ON schedule_fires (fired_at);
    "#,
    // 2: what a command or pipeline job's processes used (CPU time, resident memory
    // now and at its peak), written with its `job.usage` events and its end.
    r#"
    ALTER TABLE jobs ADD COLUMN usage JSONB;
    "#,
    // 3: the queues waiting in line at each concurrency limit (see `limits.rs`), in
    // the order they came; a row not renewed for a few seconds is dropped. Unlogged:
    // the line is rebuilt by the next claims after a database crash.
    r#"
    CREATE UNLOGGED TABLE limit_turns (
        scope TEXT NOT NULL,
        queue TEXT NOT NULL,
        seen BIGINT NOT NULL,
        place BIGINT GENERATED ALWAYS AS IDENTITY,
        PRIMARY KEY (scope, queue)
    );
    "#,
];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database up to [`VERSION`] in one transaction, under an advisory lock
/// of this schema: a second server starting at the same time waits, then finds the
/// work done.
/// `create`: the schema is made when missing (under the same lock: servers starting
/// together would otherwise race to create it).
pub async fn migrate(client: &mut Client, schema: &str, create: bool) -> Result<()> {
    let tx = client.transaction().await.db()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&LOCK_MIGRATE, &schema],
    )
    .await
    .db()?;
    if create {
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{}\"",
            schema.replace('"', "\"\"")
        ))
        .await
        .db()?;
    }
    tx.batch_execute("CREATE TABLE IF NOT EXISTS baton_schema (version BIGINT NOT NULL)")
        .await
        .db()?;
    let current: Option<i64> = tx
        .query_opt("SELECT version FROM baton_schema", &[])
        .await
        .db()?
        .map(|r| r.get(0));
    let current = match current {
        Some(v) => v,
        None => {
            tx.execute("INSERT INTO baton_schema (version) VALUES (0)", &[])
                .await
                .db()?;
            0
        }
    };
    if current > VERSION {
        return Err(Error::Config(format!(
            "the database has schema version {current}, newer than this Baton knows ({VERSION}); upgrade Baton"
        )));
    }
    for sql in MIGRATIONS.iter().skip(current as usize) {
        tx.batch_execute(sql).await.db()?;
    }
    tx.execute("UPDATE baton_schema SET version = $1", &[&VERSION])
        .await
        .db()?;
    tx.commit().await.db()
}
