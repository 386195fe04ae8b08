//! Which rank arrives last, over a group's recent steps: what `DPCOORD_DEBUG=INFO` reports,
//! once per change of that rank. A fixed ring, no allocation.

/// The steps looked back on.
pub(super) const WINDOW: usize = 64;

/// The last rank of each of the last [`WINDOW`] steps, and the straggler reported last.
pub(super) struct Stragglers {
    ring: [i32; WINDOW],
    /// The ring's next entry.
    next: usize,
    /// Steps seen, up to [`WINDOW`] (the ring's filled prefix until it wraps).
    seen: usize,
    reported: Option<i32>,
}

impl Stragglers {
    pub(super) const fn new() -> Self {
        Stragglers {
            ring: [-1; WINDOW],
            next: 0,
            seen: 0,
            reported: None,
        }
    }

    /// Counts `last_rank` as this step's last rank. Returns it, with the number of the last
    /// [`WINDOW`] steps it was last in, when that is most of them (more than half of
    /// [`WINDOW`]) and it is not the rank returned before: once per change of that rank. Only
    /// the newest entry can have just reached a majority, so only it is counted.
    pub(super) fn push(&mut self, last_rank: i32) -> Option<(i32, usize)> {
        self.ring[self.next] = last_rank;
        self.next = (self.next + 1) % WINDOW;
        self.seen = (self.seen + 1).min(WINDOW);
        let count = self.ring[..self.seen]
            .iter()
            .filter(|&&r| r == last_rank)
            .count();
        if 2 * count > WINDOW && self.reported != Some(last_rank) {
            self.reported = Some(last_rank);
            return Some((last_rank, count));
        }
        None
    }
}
