//! Turns at a concurrency limit: the queues that found a limit full while they had a
//! free slot and a job it covers wait in line, and a slot that frees goes to the
//! first of them rather than to whichever queue claims first. Without turns, the
//! queue whose job ended would take the slot back in the very write that freed it
//! (its outcome and its next claim are one write), and the other queues would wait
//! until it ran dry.
//!
//! A queue stays in line while it keeps asking: an entry not renewed within
//! [`TURN_TTL`] is dropped, so that a queue paused or gone holds no slot idle for
//! long.

use std::collections::HashMap;

use baton_core::{ConcurrencyLimit, LimitScope, Millis};

/// How long a place in line lasts without a claim renewing it (engines claim again
/// at least once a second while a limit holds them).
pub const TURN_TTL: Millis = 3_000;

/// The line at each limit: queue names, first come first, with when each last asked.
#[derive(Debug, Default)]
pub struct Turns {
    lines: HashMap<LimitScope, Vec<(String, Millis)>>,
}

/// Slots of a limit a queue may take: those free, less one for each queue ahead of it
/// in line.
pub fn free_slots(limit: &ConcurrencyLimit, held: u64, ahead: u64) -> u64 {
    u64::from(limit.max)
        .saturating_sub(held)
        .saturating_sub(ahead)
}

impl Turns {
    /// Slots of `limit` this queue may take now: those free, less one for each queue
    /// ahead of it in line (every live one when it is not in line).
    pub fn room(&mut self, limit: &ConcurrencyLimit, held: u64, queue: &str, now: Millis) -> u64 {
        let line = self.lines.entry(limit.scope.clone()).or_default();
        line.retain(|(_, seen)| now.saturating_sub(*seen) <= TURN_TTL);
        let ahead = line
            .iter()
            .position(|(q, _)| q == queue)
            .unwrap_or(line.len()) as u64;
        free_slots(limit, held, ahead)
    }

    /// The queue waits for the limit: it joins the end of the line, or keeps its place.
    pub fn wait(&mut self, limit: &ConcurrencyLimit, queue: &str, now: Millis) {
        let line = self.lines.entry(limit.scope.clone()).or_default();
        match line.iter_mut().find(|(q, _)| q == queue) {
            Some(entry) => entry.1 = now,
            None => line.push((queue.to_owned(), now)),
        }
    }

    /// The queue took a slot, or has nothing the limit covers: it leaves the line.
    pub fn leave(&mut self, limit: &ConcurrencyLimit, queue: &str) {
        if let Some(line) = self.lines.get_mut(&limit.scope) {
            line.retain(|(q, _)| q != queue);
        }
    }
}

/// What a claim may still take under the limits, read after read. Each read leaves
/// out the jobs of every limit with no room ([`Picking::full`]); a job it returns is
/// taken ([`Picking::take`]), and a limit that runs out ends the read, so that the
/// next read leaves its jobs out too: a claim never walks a backlog of jobs it cannot
/// take.
#[derive(Debug)]
pub struct Picking {
    room: Vec<u64>,
    /// The limits that had no room when the claim began.
    pub closed: Vec<bool>,
    /// The limits of which the claim took a slot.
    pub took: Vec<bool>,
}

impl Picking {
    /// `room`: the slots of each limit this queue may take (see [`Turns::room`]).
    pub fn new(room: Vec<u64>) -> Self {
        Self {
            closed: room.iter().map(|r| *r == 0).collect(),
            took: vec![false; room.len()],
            room,
        }
    }

    /// The limits whose jobs the next read leaves out.
    pub fn full<'a>(
        &'a self,
        limits: &'a [ConcurrencyLimit],
    ) -> impl Iterator<Item = &'a ConcurrencyLimit> + 'a {
        limits
            .iter()
            .zip(&self.room)
            .filter(|(_, r)| **r == 0)
            .map(|(l, _)| l)
    }

    /// Takes a slot of each limit that covers a job the read returned; whether one of
    /// them ran out (the read ends then).
    pub fn take(
        &mut self,
        limits: &[ConcurrencyLimit],
        kind: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        let mut ran_out = false;
        for (i, l) in limits.iter().enumerate() {
            if l.covers(kind, labels) {
                self.room[i] = self.room[i].saturating_sub(1);
                self.took[i] = true;
                ran_out |= self.room[i] == 0;
            }
        }
        ran_out
    }
}

/// When each queue's claim last looked through the whole queue past a full limit's
/// jobs. Such a read looks at the queue's first [`WINDOW`] jobs, and at the whole
/// queue once each [`DEEP_SCAN_EVERY`]: a job behind a long backlog of jobs a full
/// limit covers waits at most that long (engines claim again each second while
/// limits are set), and a claim's cost does not grow with the backlog.
#[derive(Debug, Default)]
pub struct DeepScans(HashMap<String, Millis>);

/// How many of a queue's first jobs a claim looks through past a full limit's jobs,
/// between two looks through the whole queue.
pub const WINDOW: usize = 1000;
/// How often a queue's claim looks through the whole queue past a full limit's jobs.
pub const DEEP_SCAN_EVERY: Millis = 1000;

impl DeepScans {
    /// Whether this read of the queue looks through all of it (and if so, notes when).
    pub fn due(&mut self, queue: &str, now: Millis) -> bool {
        match self.0.get_mut(queue) {
            Some(at) if now.saturating_sub(*at) < DEEP_SCAN_EVERY => false,
            Some(at) => {
                *at = now;
                true
            }
            None => {
                self.0.insert(queue.to_owned(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_slot_goes_to_the_first_in_line_and_a_silent_queue_loses_its_place() {
        let l = ConcurrencyLimit::label("source", "x", 2);
        let mut t = Turns::default();
        t.wait(&l, "b", 0);
        t.wait(&l, "c", 10);
        // One slot free: the first in line may take it, the second and "a" may not.
        assert_eq!(t.room(&l, 1, "b", 20), 1);
        assert_eq!(t.room(&l, 1, "c", 20), 0);
        assert_eq!(t.room(&l, 1, "a", 20), 0);
        t.leave(&l, "b");
        assert_eq!(t.room(&l, 1, "c", 30), 1);
        // "c" stops asking: past the TTL its place is gone and anyone may take the slot.
        assert_eq!(t.room(&l, 1, "a", 10 + TURN_TTL + 1), 1);
        // Full is full, in line or not.
        t.wait(&l, "a", 0);
        assert_eq!(t.room(&l, 2, "a", 1), 0);
    }
}
