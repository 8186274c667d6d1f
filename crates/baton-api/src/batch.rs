//! `POST /api/jobs/batch`: many jobs in one write, all or none.

use serde::{Deserialize, Serialize};

use crate::{Job, JobSpec};

/// The most jobs one batch may hold.
pub const MAX_BATCH_JOBS: usize = 10_000;

/// `POST /api/jobs/batch`: the specs, stored in one write or not at all. A spec may
/// depend on a job given earlier in the same batch (by its client `id`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// From 1 to 10,000 job specs.
    pub jobs: Vec<JobSpec>,
}

/// What a batch stored: the jobs in the order of the request, and for each whether
/// this request created it (`false`: a job with its client id, or its unique key
/// under `unique_policy: return_existing`, existed already, and is answered as it is).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchResponse {
    pub jobs: Vec<Job>,
    /// `created[i]` is for `jobs[i]`.
    pub created: Vec<bool>,
}
