//! `baton bench submit`: how fast jobs are stored through the HTTP API, one per
//! request (`POST /api/jobs`) and in batches (`POST /api/jobs/batch`).
//!
//! The bench starts a real `baton serve` child on its own database and pauses the
//! default queue first, so that what it measures is submitting and storing, not
//! running. The request bodies are made before the clock starts; client threads send
//! them flat out. Afterwards every job is looked up by id (`POST /api/jobs/status`):
//! a job the server acknowledged but cannot show fails the bench.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use baton_store::Durability;
use serde_json::{Value, json};

use crate::bench_proc;
use crate::bench_server::Server;

#[derive(Clone, Debug)]
pub struct Settings {
    /// Jobs sent one per request.
    pub single_jobs: usize,
    /// Jobs sent in batches.
    pub batch_jobs: usize,
    /// Jobs per batch request.
    pub batch_size: usize,
    /// Client threads sending at once (for each measurement).
    pub threads: usize,
}

pub async fn run(db: &Path, workdir: &Path, durability: Durability, s: Settings) -> Result<Value> {
    if s.single_jobs == 0 || s.batch_jobs == 0 || s.threads == 0 {
        bail!("--single-jobs, --batch-jobs and --threads must be at least 1");
    }
    if !(1..=baton_api::MAX_BATCH_JOBS).contains(&s.batch_size) {
        bail!(
            "--batch-size must be from 1 to {}",
            baton_api::MAX_BATCH_JOBS
        );
    }
    let server = Server::start(db, workdir, durability, "submit-server.log")?;
    let url = server.url.clone();
    let stat = std::path::PathBuf::from(format!("/proc/{}/stat", server.pid));
    let measured = tokio::task::spawn_blocking(move || measure(&url, &stat, &s)).await?;
    let mut report = match measured {
        Ok(report) => report,
        Err(e) => return Err(e.context(server.log_tail())),
    };
    report["durability"] = json!(match durability {
        Durability::Full => "full",
        Durability::Normal => "normal",
    });
    server.stop()?;
    Ok(report)
}

fn measure(url: &str, stat: &Path, s: &Settings) -> Result<Value> {
    let api = Http::new(url);
    let (status, text) = api.post("/api/queues/default/pause", "")?;
    if status != 200 {
        bail!("cannot pause the default queue: {status} {text}");
    }
    let (status, text) = api.get("/api/stats")?;
    let stats: Value = serde_json::from_str(&text).context("unexpected /api/stats")?;
    if status != 200 {
        bail!("cannot read /api/stats: {status} {text}");
    }
    let synchronous = stats["synchronous"].clone();
    // Ids of this run only, so that a reused --db cannot count old jobs.
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let spec = |id: String| json!({"id": id, "kind": "command", "command": ["true"]});

    let single_ids: Vec<String> = (0..s.single_jobs).map(|i| format!("s{run}-{i}")).collect();
    let bodies: Vec<(String, usize)> = single_ids
        .iter()
        .map(|id| (spec(id.clone()).to_string(), 1))
        .collect();
    let cpu = bench_proc::cpu_ticks_from(stat)?;
    let single = send(&api, "/api/jobs", bodies, s.threads)?;
    let single_cpu = bench_proc::cpu_ticks_from(stat)? - cpu;

    let batch_ids: Vec<String> = (0..s.batch_jobs).map(|i| format!("b{run}-{i}")).collect();
    let bodies: Vec<(String, usize)> = batch_ids
        .chunks(s.batch_size)
        .map(|ids| {
            let jobs: Vec<Value> = ids.iter().map(|id| spec(id.clone())).collect();
            (json!({ "jobs": jobs }).to_string(), ids.len())
        })
        .collect();
    let cpu = bench_proc::cpu_ticks_from(stat)?;
    let batch = send(&api, "/api/jobs/batch", bodies, s.threads)?;
    let batch_cpu = bench_proc::cpu_ticks_from(stat)? - cpu;

    verify(&api, &single_ids)?;
    verify(&api, &batch_ids)?;
    let per_s = |jobs: usize, took: Duration| -> Result<f64> {
        let secs = took.as_secs_f64();
        if secs <= 0.0 {
            bail!("the run took no measurable time");
        }
        Ok(jobs as f64 / secs)
    };
    Ok(json!({
        "bench": "submit",
        "store": "sqlite",
        "synchronous": synchronous,
        "threads": s.threads,
        "batch_size": s.batch_size,
        "single_jobs": s.single_jobs,
        "batch_jobs": s.batch_jobs,
        "single_ms": single.as_secs_f64() * 1000.0,
        "batch_ms": batch.as_secs_f64() * 1000.0,
        "single_per_s": per_s(s.single_jobs, single)?,
        "batch_per_s": per_s(s.batch_jobs, batch)?,
        // The server's own CPU time (all its threads) per job: unlike the rates, it
        // does not depend on what else the machine runs meanwhile.
        "single_server_cpu_us_per_job": cpu_us_per_job(single_cpu, s.single_jobs),
        "batch_server_cpu_us_per_job": cpu_us_per_job(batch_cpu, s.batch_jobs),
    }))
}

fn cpu_us_per_job(ticks: u64, jobs: usize) -> f64 {
    ticks as f64 / bench_proc::TICKS_PER_S * 1e6 / jobs as f64
}

/// Sends every body (with the jobs it holds) to `path` from `threads` threads; the time
/// until the last answer. Each answer must be 201 and, for a batch, say that it created
/// every job.
fn send(api: &Http, path: &str, bodies: Vec<(String, usize)>, threads: usize) -> Result<Duration> {
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (api, bodies, next, path) =
                (api.clone(), bodies.clone(), next.clone(), path.to_owned());
            std::thread::spawn(move || -> Result<()> {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((body, jobs)) = bodies.get(i) else {
                        return Ok(());
                    };
                    let (status, text) = api.post(&path, body)?;
                    if status != 201 {
                        bail!("POST {path} answered {status}: {}", clip(&text));
                    }
                    if *jobs > 1 && created(&text) != Some(*jobs) {
                        bail!("POST {path} did not create all {jobs} jobs of a batch");
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| anyhow!("a submitting thread panicked"))??;
    }
    Ok(started.elapsed())
}

/// The `true`s of a batch answer's `created` list, read without parsing the jobs.
fn created(text: &str) -> Option<usize> {
    let at = text.rfind("\"created\":[")?;
    let list = &text[at..];
    let end = list.find(']')?;
    Some(list[..end].matches("true").count())
}

/// Every id must be a stored job (and still queued: the queue is paused).
fn verify(api: &Http, ids: &[String]) -> Result<()> {
    for chunk in ids.chunks(1000) {
        let body = json!({ "ids": chunk }).to_string();
        let (status, text) = api.post("/api/jobs/status", &body)?;
        if status != 200 {
            bail!("POST /api/jobs/status answered {status}: {}", clip(&text));
        }
        let answer: Value = serde_json::from_str(&text).context("unexpected status answer")?;
        let missing = answer["missing"].as_array().map_or(0, Vec::len);
        let queued = answer["jobs"]
            .as_array()
            .map_or(0, |j| j.iter().filter(|j| j["state"] == "queued").count());
        if missing > 0 || queued != chunk.len() {
            bail!(
                "the server acknowledged jobs it does not hold: of {} ids, {missing} are missing and {queued} queued",
                chunk.len()
            );
        }
    }
    Ok(())
}

fn clip(text: &str) -> &str {
    &text[..text.len().min(300)]
}

/// A plain HTTP client for the bench: bodies go as they are, no JSON on the way.
#[derive(Clone)]
struct Http {
    base: String,
    agent: ureq::Agent,
}

impl Http {
    fn new(base: &str) -> Http {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections_per_host(64)
            .build()
            .into();
        Http {
            base: base.trim_end_matches('/').to_owned(),
            agent,
        }
    }

    fn post(&self, path: &str, body: &str) -> Result<(u16, String)> {
        let mut answer = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .send(body)
            .with_context(|| format!("POST {path}"))?;
        let status = answer.status().as_u16();
        let text = answer
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()?;
        Ok((status, text))
    }

    fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut answer = self
            .agent
            .get(&format!("{}{path}", self.base))
            .call()
            .with_context(|| format!("GET {path}"))?;
        let status = answer.status().as_u16();
        Ok((status, answer.body_mut().read_to_string()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_counts_the_answer_list() {
        let text =
            r#"{"jobs":[{"id":"a","labels":{"created":"true"}}],"created":[true,false,true]}"#;
        assert_eq!(created(text), Some(2));
        assert_eq!(created(r#"{"jobs":[]}"#), None);
    }
}
