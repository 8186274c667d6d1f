//! What an attempt shares with the worker that runs it: the control intent and the
//! narrow environment a running job may use. A leaf: the worker (`engine`), the
//! handler's view (`context`) and the command runner (`command`) import it, and it
//! imports none of them.

use std::sync::Arc;

use baton_store::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// The control intent for a running attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ctl {
    Run,
    Pause,
    Stop,
}

/// All of the engine that one attempt may use: the store and clock, its job and
/// fencing token (every write it makes carries it), its control channel and stop
/// token, and the log bound.
pub(crate) struct RunEnv {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub job_id: String,
    pub fence: u64,
    pub ctl: watch::Receiver<Ctl>,
    pub cancel: CancellationToken,
    /// Log lines kept per job (command and pipeline jobs).
    pub max_log_lines: u64,
    /// The commands policy and the secret key, applied again at spawn.
    pub security: Arc<crate::Security>,
    /// The usage sampler, which measures the attempt's processes and enforces its
    /// resource limits.
    pub meter: Arc<crate::usage::Meter>,
}
