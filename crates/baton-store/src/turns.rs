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

/// What a claim may take of the jobs a limit covers.
#[derive(Clone, Debug)]
pub struct Room {
    /// How many more of its jobs may start for this claimer now.
    pub free: u64,
    /// How many hold a slot now.
    pub held: u64,
}

impl Turns {
    /// Slots of `limit` this queue may take now: those free, less one for each queue
    /// ahead of it in line (every live one when it is not in line).
    pub fn room(&mut self, limit: &ConcurrencyLimit, held: u64, queue: &str, now: Millis) -> Room {
        let line = self.lines.entry(limit.scope.clone()).or_default();
        line.retain(|(_, seen)| now.saturating_sub(*seen) <= TURN_TTL);
        let ahead = line
            .iter()
            .position(|(q, _)| q == queue)
            .unwrap_or(line.len()) as u64;
        Room {
            free: u64::from(limit.max)
                .saturating_sub(held)
                .saturating_sub(ahead),
            held,
        }
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
        assert_eq!(t.room(&l, 1, "b", 20).free, 1);
        assert_eq!(t.room(&l, 1, "c", 20).free, 0);
        assert_eq!(t.room(&l, 1, "a", 20).free, 0);
        t.leave(&l, "b");
        assert_eq!(t.room(&l, 1, "c", 30).free, 1);
        // "c" stops asking: past the TTL its place is gone and anyone may take the slot.
        assert_eq!(t.room(&l, 1, "a", 10 + TURN_TTL + 1).free, 1);
        // Full is full, in line or not.
        t.wait(&l, "a", 0);
        assert_eq!(t.room(&l, 2, "a", 1).free, 0);
    }
}
