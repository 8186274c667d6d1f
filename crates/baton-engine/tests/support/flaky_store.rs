//! A store that fails chosen writes and reads: it wraps a real store and answers the
//! next N writes of an attempt's outcome (a fenced move to a terminal state), or the
//! next N reads of a job's dependencies, with an error, as a full disk or a failing
//! device would, without writing anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use baton_core::{Event, Job, Millis, NewJob, PipelineSpec, Schedule, WorkflowGraph};
use baton_store::*;
use tokio::sync::{Mutex, broadcast};

pub struct FlakyStore {
    inner: Arc<dyn Store>,
    /// Outcome writes still to fail.
    fail: AtomicU32,
    /// The error they fail with.
    error: Mutex<Error>,
    /// Outcome writes refused so far.
    pub refused: AtomicU32,
    /// Reads of dependencies still to fail.
    fail_dependencies: AtomicU32,
}

impl FlakyStore {
    pub fn new(inner: Arc<dyn Store>) -> Arc<FlakyStore> {
        Arc::new(FlakyStore {
            inner,
            fail: AtomicU32::new(0),
            error: Mutex::new(Error::Internal("disk I/O error".into())),
            refused: AtomicU32::new(0),
            fail_dependencies: AtomicU32::new(0),
        })
    }

    /// The next `n` outcome writes fail with `error`.
    pub async fn fail_outcomes(&self, n: u32, error: Error) {
        *self.error.lock().await = error;
        self.fail.store(n, Ordering::SeqCst);
    }

    /// The next `n` reads of a job's dependencies fail with an I/O error.
    #[allow(dead_code)] // not every test binary that includes this file uses it
    pub fn fail_dependency_reads(&self, n: u32) {
        self.fail_dependencies.store(n, Ordering::SeqCst);
    }

    async fn check(&self, t: &Transition) -> Result<()> {
        let outcome = t.fence.is_some() && t.to.is_terminal();
        if outcome
            && self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(self.error.lock().await.clone());
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FlakyStore {
    async fn submit(&self, jobs: Vec<NewJob>) -> Result<Vec<Submitted>> {
        self.inner.submit(jobs).await
    }
    async fn submit_and_start(&self, jobs: Vec<NewJob>, start: StartNow) -> Result<Vec<Submitted>> {
        self.inner.submit_and_start(jobs, start).await
    }
    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Claimed>> {
        self.inner.claim(req).await
    }
    fn set_concurrency_limits(&self, limits: Vec<baton_core::ConcurrencyLimit>) {
        self.inner.set_concurrency_limits(limits)
    }
    async fn concurrency_held(&self, limits: &[baton_core::ConcurrencyLimit]) -> Result<Vec<u64>> {
        self.inner.concurrency_held(limits).await
    }
    async fn transition(&self, t: Transition) -> Result<Job> {
        self.check(&t).await?;
        self.inner.transition(t).await
    }
    async fn record(&self, t: Transition) -> Result<()> {
        self.check(&t).await?;
        self.inner.record(t).await
    }
    async fn update(&self, job_id: &str, fence: u64, now: Millis, update: Update) -> Result<()> {
        self.inner.update(job_id, fence, now, update).await
    }
    async fn promote_due(&self, now: Millis) -> Result<Promoted> {
        self.inner.promote_due(now).await
    }
    async fn recover(&self, req: RecoverRequest) -> Result<Vec<Recovered>> {
        self.inner.recover(req).await
    }
    async fn release(&self, server_id: &str, now: Millis) -> Result<Vec<Recovered>> {
        self.inner.release(server_id, now).await
    }
    async fn register_server(&self, server: ServerInfo) -> Result<()> {
        self.inner.register_server(server).await
    }
    async fn heartbeat(&self, server_id: &str, now: Millis) -> Result<()> {
        self.inner.heartbeat(server_id, now).await
    }
    async fn server_stopped(&self, server_id: &str, now: Millis) -> Result<()> {
        self.inner.server_stopped(server_id, now).await
    }
    async fn get(&self, id: &str) -> Result<Option<Job>> {
        self.inner.get(id).await
    }
    async fn list(&self, filter: JobFilter) -> Result<JobPage> {
        self.inner.list(filter).await
    }
    async fn job_events(&self, job_id: &str, after_seq: u64, limit: usize) -> Result<Vec<Event>> {
        self.inner.job_events(job_id, after_seq, limit).await
    }
    async fn job_events_of(
        &self,
        job_id: &str,
        kinds: &[baton_core::EventKind],
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        self.inner
            .job_events_of(job_id, kinds, after_seq, limit)
            .await
    }
    async fn events_after(&self, after_id: u64, limit: usize) -> Result<Vec<Event>> {
        self.inner.events_after(after_id, limit).await
    }
    async fn last_event_id(&self) -> Result<u64> {
        self.inner.last_event_id().await
    }
    async fn events_pruned_upto(&self) -> Result<u64> {
        self.inner.events_pruned_upto().await
    }
    async fn prune(&self, req: baton_store::PruneRequest) -> Result<baton_store::Pruned> {
        self.inner.prune(req).await
    }
    async fn checkpoints(&self, job_id: &str) -> Result<Vec<Checkpoint>> {
        self.inner.checkpoints(job_id).await
    }
    async fn servers(&self) -> Result<Vec<ServerInfo>> {
        self.inner.servers().await
    }
    async fn counts(&self) -> Result<Counts> {
        self.inner.counts().await
    }
    async fn next_due(&self) -> Result<Option<Millis>> {
        self.inner.next_due().await
    }
    async fn set_process(
        &self,
        job_id: &str,
        fence: u64,
        process: Option<JobProcess>,
    ) -> Result<()> {
        self.inner.set_process(job_id, fence, process).await
    }
    async fn processes(&self) -> Result<Vec<ProcessRecord>> {
        self.inner.processes().await
    }
    async fn append_logs(&self, req: AppendLogs) -> Result<Appended> {
        self.inner.append_logs(req).await
    }
    async fn logs(&self, job_id: &str, after: u64, limit: usize) -> Result<Vec<LogLine>> {
        self.inner.logs(job_id, after, limit).await
    }
    async fn put_pipeline(&self, spec: PipelineSpec, now: Millis) -> Result<Pipeline> {
        self.inner.put_pipeline(spec, now).await
    }
    async fn pipeline(&self, id: &str) -> Result<Option<Pipeline>> {
        self.inner.pipeline(id).await
    }
    async fn pipelines(&self) -> Result<Vec<Pipeline>> {
        self.inner.pipelines().await
    }
    async fn delete_pipeline(&self, id: &str) -> Result<bool> {
        self.inner.delete_pipeline(id).await
    }
    async fn create_schedule(&self, schedule: NewSchedule) -> Result<PutSchedule> {
        self.inner.create_schedule(schedule).await
    }
    async fn put_schedule(&self, schedule: NewSchedule) -> Result<PutSchedule> {
        self.inner.put_schedule(schedule).await
    }
    async fn delete_schedule(&self, id: &str) -> Result<Option<Schedule>> {
        self.inner.delete_schedule(id).await
    }
    async fn set_schedule_enabled(
        &self,
        id: &str,
        enabled: bool,
        next_run: Option<Millis>,
        now: Millis,
    ) -> Result<Option<Schedule>> {
        self.inner
            .set_schedule_enabled(id, enabled, next_run, now)
            .await
    }
    async fn fire_schedule(&self, fire: Fire) -> Result<FireOutcome> {
        self.inner.fire_schedule(fire).await
    }
    async fn release_schedule(&self, id: &str, now: Millis) -> Result<Released> {
        self.inner.release_schedule(id, now).await
    }
    async fn schedule(&self, id: &str) -> Result<Option<Schedule>> {
        self.inner.schedule(id).await
    }
    async fn schedules(&self, filter: ScheduleFilter) -> Result<SchedulePage> {
        self.inner.schedules(filter).await
    }
    async fn schedule_history(
        &self,
        id: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<FirePage> {
        self.inner.schedule_history(id, before, limit).await
    }
    async fn schedule_timers(&self) -> Result<Vec<ScheduleTimer>> {
        self.inner.schedule_timers().await
    }
    async fn awaiting_schedules(&self) -> Result<Vec<String>> {
        self.inner.awaiting_schedules().await
    }
    async fn submit_workflow(&self, workflow: NewWorkflow) -> Result<SubmittedWorkflow> {
        self.inner.submit_workflow(workflow).await
    }
    async fn workflow(&self, id: &str) -> Result<Option<WorkflowGraph>> {
        self.inner.workflow(id).await
    }
    async fn control_workflow(
        &self,
        id: &str,
        action: WorkflowAction,
        now: Millis,
    ) -> Result<WorkflowChange> {
        self.inner.control_workflow(id, action, now).await
    }
    async fn workflows(&self, f: baton_store::WorkflowFilter) -> Result<baton_store::WorkflowPage> {
        self.inner.workflows(f).await
    }
    async fn throughput(
        &self,
        span: baton_store::Span,
        since: Millis,
    ) -> Result<Vec<baton_store::ThroughputRow>> {
        self.inner.throughput(span, since).await
    }
    async fn dependencies(&self, job_id: &str) -> Result<Vec<Link>> {
        if self
            .fail_dependencies
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::Internal("disk I/O error".into()));
        }
        self.inner.dependencies(job_id).await
    }
    async fn dependents(&self, job_id: &str) -> Result<Vec<Link>> {
        self.inner.dependents(job_id).await
    }
    async fn set_queue_paused(&self, queue: &str, paused: bool, now: Millis) -> Result<bool> {
        self.inner.set_queue_paused(queue, paused, now).await
    }
    async fn note(
        &self,
        kind: baton_core::EventKind,
        data: serde_json::Value,
        now: Millis,
    ) -> Result<()> {
        self.inner.note(kind, data, now).await
    }
    async fn paused_queues(&self) -> Result<Vec<String>> {
        self.inner.paused_queues().await
    }
    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.subscribe()
    }
    fn write_stats(&self) -> Option<Arc<WriteStats>> {
        self.inner.write_stats()
    }
    async fn close(&self) {
        self.inner.close().await
    }
}
