//! `baton submit --file jobs.jsonl`: many job specs, one JSON object a line, sent in
//! batches to `POST /api/jobs/batch`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use baton_api::{BatchResponse, JobSpec, MAX_BATCH_JOBS};
use serde_json::json;

use crate::client::{Client, Exit, exit};

/// A spec and the line of the file it came from (1-based).
struct Line {
    number: usize,
    spec: JobSpec,
}

/// Reads every spec first, so that a bad line is reported before anything is sent.
fn read(file: &Path) -> Result<Vec<Line>> {
    let name = file.display().to_string();
    let reader: Box<dyn BufRead> = if name == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("cannot read {name}"))?;
        Box::new(std::io::BufReader::new(f))
    };
    let shown = if name == "-" { "standard input" } else { &name };
    let mut out = Vec::new();
    for (i, text) in reader.lines().enumerate() {
        let number = i + 1;
        let text = text.with_context(|| format!("cannot read line {number} of {shown}"))?;
        if text.trim().is_empty() {
            continue;
        }
        let spec: JobSpec = serde_json::from_str(&text)
            .map_err(|e| anyhow!("line {number} of {shown}: invalid job spec: {e}"))?;
        out.push(Line { number, spec });
    }
    Ok(out)
}

/// Sends the specs of `file` in batches of `batch_size`; prints the ids (or the jobs
/// with `--json`) on stdout as each batch is stored, and a summary on stderr.
pub fn run(client: &Client, file: &Path, batch_size: usize) -> Result<u8> {
    if !(1..=MAX_BATCH_JOBS).contains(&batch_size) {
        return Err(anyhow!(
            "invalid --batch-size {batch_size}: expected a number from 1 to {MAX_BATCH_JOBS}"
        ));
    }
    let lines = read(file)?;
    if lines.is_empty() {
        return Err(anyhow!("{} holds no job specs", file.display()));
    }
    let total = lines.len();
    let mut bar = Bar::new(total);
    let (mut stored, mut created) = (0usize, 0usize);
    let mut out = std::io::stdout().lock();
    for chunk in lines.chunks(batch_size) {
        let specs: Vec<&JobSpec> = chunk.iter().map(|l| &l.spec).collect();
        let body = json!({ "jobs": specs });
        let answer: BatchResponse = match client.call_or_refusal(
            "POST",
            "/api/jobs/batch",
            Some(&body),
        )? {
            Ok(answer) => answer,
            Err(refusal) => {
                bar.clear();
                let first = chunk[0].number;
                let last = chunk[chunk.len() - 1].number;
                let at = match refusal.error.index.and_then(|i| chunk.get(i)) {
                    Some(line) => format!("line {}", line.number),
                    None => format!("the batch of lines {first} to {last}"),
                };
                return Err(anyhow::Error::new(Exit {
                    code: exit::FAILED,
                    message: format!(
                        "{at} was refused ({}): {}; {stored} jobs were stored before it (up to the line before {first}), none from line {first} on",
                        refusal.status, refusal.error.message
                    ),
                }));
            }
        };
        for job in &answer.jobs {
            if client.json {
                writeln!(out, "{}", serde_json::to_string(job)?)?;
            } else {
                writeln!(out, "{}", job.id)?;
            }
        }
        out.flush()?;
        stored += answer.jobs.len();
        created += answer.created.iter().filter(|c| **c).count();
        bar.draw(stored);
    }
    bar.clear();
    let batches = total.div_ceil(batch_size);
    eprintln!(
        "submitted {stored} jobs in {batches} {}: {created} created, {} existed already",
        if batches == 1 { "batch" } else { "batches" },
        stored - created
    );
    Ok(exit::OK)
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
struct Bar {
    total: usize,
    on: bool,
}

impl Bar {
    fn new(total: usize) -> Bar {
        Bar {
            total,
            on: std::io::stderr().is_terminal(),
        }
    }

    fn draw(&mut self, done: usize) {
        if !self.on {
            return;
        }
        const WIDTH: usize = 30;
        let filled = done * WIDTH / self.total.max(1);
        eprint!(
            "\r\x1b[2K[{}{}] {done}/{} jobs",
            "#".repeat(filled),
            " ".repeat(WIDTH - filled),
            self.total
        );
        let _ = std::io::stderr().flush();
    }

    fn clear(&mut self) {
        if self.on {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }
}
