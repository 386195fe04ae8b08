//! Which rank arrives last, over the recent steps of one coordinator or host group: what the
//! `DPCOORD_DEBUG=INFO` log reports, once per change of that rank. A fixed ring, no
//! allocation; both transports keep one.

use super::log::{enabled, Ctx, Level};

/// The steps looked back on.
pub(crate) const WINDOW: usize = 64;

/// The last rank of each of the last [`WINDOW`] steps, and the straggler logged last.
pub(crate) struct Stragglers {
    ring: [i32; WINDOW],
    /// The ring's next slot.
    next: usize,
    /// Steps seen, up to [`WINDOW`] (the ring's filled prefix until it wraps).
    seen: usize,
    logged: Option<i32>,
}

impl Stragglers {
    pub(crate) const fn new() -> Self {
        Stragglers {
            ring: [-1; WINDOW],
            next: 0,
            seen: 0,
            logged: None,
        }
    }

    /// Counts `last_rank` as this step's last rank. Returns the rank and how many of the
    /// last [`WINDOW`] steps it was last in when it was last in most of them (more than
    /// half of [`WINDOW`]) and is not the rank this returned before: the log's once per
    /// change. Only the newest rank can have just reached a majority, so only it is counted.
    pub(crate) fn push(&mut self, last_rank: i32) -> Option<(i32, usize)> {
        self.ring[self.next] = last_rank;
        self.next = (self.next + 1) % WINDOW;
        self.seen = (self.seen + 1).min(WINDOW);
        let count = self.ring[..self.seen]
            .iter()
            .filter(|&&r| r == last_rank)
            .count();
        if 2 * count > WINDOW && self.logged != Some(last_rank) {
            self.logged = Some(last_rank);
            return Some((last_rank, count));
        }
        None
    }

    /// Counts `last_rank` as this step's last rank and, while `DPCOORD_DEBUG=INFO`, logs the
    /// straggler line when a rank was last in most of the last [`WINDOW`] steps, once per
    /// change of that rank (`skew_ns`: this step's arrival skew). Off, it costs the level check.
    pub(crate) fn note(&mut self, ctx: &Ctx<'_>, last_rank: i32, skew_ns: i64) {
        if !enabled(Level::Info) {
            return;
        }
        if let Some((rank, count)) = self.push(last_rank) {
            super::log!(
                Level::Info,
                ctx,
                "straggler: rank {rank} arrived last in {count} of the last {WINDOW} steps \
                 (this one's arrival skew: {skew_ns} ns, between CLOCK_MONOTONIC clocks: exact \
                 on one host)"
            );
        }
    }
}

#[cfg(test)]
mod tests;
