//! Which rank arrives last, over the recent exchanges of one coordinator: what the
//! `DPCOORD_DEBUG=INFO` log reports, once per change of that rank. A fixed ring, no allocation.

/// The exchanges looked back on.
pub(super) const WINDOW: usize = 64;

/// The last rank of each of the last [`WINDOW`] exchanges, and the straggler logged last.
pub(super) struct Stragglers {
    ring: [i32; WINDOW],
    /// The ring's next slot.
    next: usize,
    /// Exchanges seen, up to [`WINDOW`] (the ring's filled prefix until it wraps).
    seen: usize,
    logged: Option<i32>,
}

impl Stragglers {
    pub(super) const fn new() -> Self {
        Stragglers {
            ring: [-1; WINDOW],
            next: 0,
            seen: 0,
            logged: None,
        }
    }

    /// Counts `last_rank` as this exchange's last rank. Returns the rank and how many of the
    /// last [`WINDOW`] exchanges it was last in when it was last in most of them (more than
    /// half of [`WINDOW`]) and is not the rank this returned before: the log's once per
    /// change. Only the newest rank can have just reached a majority, so only it is counted.
    pub(super) fn push(&mut self, last_rank: i32) -> Option<(i32, usize)> {
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
}
