//! The reader's side of the slot (docs/ARCHITECTURE.md, "One slot on every wire"): every
//! transport checks the gathered slots the same way before it decides, over the live ranks and
//! in this order: checksums, then the invalid-request marker, then the configuration words,
//! then the step ids and parent step ids. Only the checksum detects damaged bytes, only the
//! step ids a rank that skipped a call; sequence numbers (aborted, partial or recreated
//! exchanges) are the transports' own check, before this one.

use super::graphs::GraphTable;
use super::v1::{decide_summary, fill_after_padding, make_record, Acc, Decision, Summary};
use super::v2::{decide_v2_with, make_v2_record, Agreement, V2Config};
use super::{
    check_active_ranks, marker_error, LiveRuns, Request, DEFAULT_DECODE_TOKEN_THRESHOLD,
    DEFAULT_NUM_UBATCHES, DEFAULT_PREFILL_TOKEN_THRESHOLD, DP_RULES_VLLM_V2,
};
use crate::error::{invalid, Error, ErrorKind, Result};
use crate::slot::{at, Settings, Slot, CHECK_TARGET, LAYOUT_TAG, SLOT3_WORDS, WEIGHTS};

/// This rank's slot for a request (validated here): the settings, step ids and record a
/// transport exchanges, with its sequence number `seq` and arrival time; sealed. `table` is
/// the graph table of the V2 rules (`None`: no table; V1 reads none).
pub(crate) fn make(
    req: &Request,
    seq: u32,
    arrival_ns: i64,
    table: Option<&GraphTable>,
) -> Result<Slot> {
    let (settings, record) = if req.rules == DP_RULES_VLLM_V2 {
        let record: [i32; 8] = bytemuck::cast(make_v2_record(req, table)?);
        (v2_settings(&V2Config::of(req, table), table), record)
    } else {
        let [a, b, c, d, e] = make_record(req)?.to_words();
        let settings = Settings {
            rules: req.rules,
            pad_policy: req.pad_policy,
            num_ubatches: if req.ubatch.enabled {
                req.ubatch.num_ubatches
            } else {
                0
            },
            decode_threshold: 0,
            prefill_threshold: 0,
            graphs: 0,
            decode_query_len: 0,
        };
        (settings, [a, b, c, d, e, 0, 0, 0])
    };
    Ok(Slot::new(
        seq,
        &settings,
        req.step_id,
        req.parent_step_id,
        arrival_ns,
        record,
    ))
}

/// The configuration words of a V2 step: `cfg` as every rank derives it, and the table's hash.
fn v2_settings(cfg: &V2Config, table: Option<&GraphTable>) -> Settings {
    let on = cfg.ubatch_enabled;
    Settings {
        rules: DP_RULES_VLLM_V2,
        pad_policy: 0,
        num_ubatches: if on { cfg.num_ubatches } else { 0 },
        decode_threshold: if on { cfg.decode_token_threshold } else { 0 },
        prefill_threshold: if on { cfg.prefill_token_threshold } else { 0 },
        graphs: table.map_or(0, GraphTable::hash),
        decode_query_len: cfg.decode_query_len,
    }
}

/// The [`V2Config`] that [`v2_settings`] wrote into a slot's configuration words.
fn v2_config(s: &Settings) -> V2Config {
    if s.num_ubatches == 0 {
        V2Config {
            ubatch_enabled: false,
            num_ubatches: 1,
            decode_token_threshold: DEFAULT_DECODE_TOKEN_THRESHOLD,
            prefill_token_threshold: DEFAULT_PREFILL_TOKEN_THRESHOLD,
            decode_query_len: s.decode_query_len,
        }
    } else {
        V2Config {
            ubatch_enabled: true,
            num_ubatches: s.num_ubatches,
            decode_token_threshold: s.decode_threshold,
            prefill_token_threshold: s.prefill_threshold,
            decode_query_len: s.decode_query_len,
        }
    }
}

/// What the checks established about a step's slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checked {
    /// The configuration every live rank carries.
    pub(crate) settings: Settings,
    /// The step id every live rank agrees on (0: unchecked).
    pub(crate) step_id: i64,
    /// The parent step id every live rank agrees on (0: none).
    pub(crate) parent_step_id: i64,
    /// The live rank that arrived last (the lowest such rank on a tie).
    pub(crate) last_rank: i32,
    /// Latest minus earliest arrival over the live ranks, in ns.
    pub(crate) arrival_skew_ns: i64,
}

/// Runs the checks over `slots` (`slots[r]` is rank r's; `live[r] == 0` marks a dead slot,
/// which is not read). The caller has checked `live` (length, bytes, a live rank).
#[inline(always)]
pub(crate) fn check(slots: &[Slot], live: Option<&[u8]>) -> Result<Checked> {
    let is_live = |r: usize| live.map_or(true, |l| l[r] != 0);
    let Some(first) = (0..slots.len()).find(|&r| is_live(r)) else {
        return Err(Error::internal("no live rank to check"));
    };
    let base = &slots[first];
    // One pass: every fault as a flag; only a fault walks the slots again to name it.
    let mut scan = Scan::new(first);
    match live {
        None => scan.run(slots, 0, slots.len(), base),
        Some(live) => {
            for (begin, end) in (LiveRuns { live, r: 0 }) {
                scan.run(slots, begin, end, base);
            }
        }
    }
    let faulty = !scan.intact() | scan.marker | (scan.diff.iter().fold(0, |a, &d| a | d) != 0);
    // The first live rank at fault, in the contract's order of checks (only after a flag).
    let find =
        |fault: &dyn Fn(&Slot) -> bool| faulty.then(|| slots_where(slots, live, fault)).flatten();
    if let Some(r) = find(&|s| !s.intact()) {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "slots[{r}] fails its checksum: rank {r}'s slot was damaged between its \
                 dp_make_slot and this read (the transport, or a stray write into its memory); \
                 nothing of this exchange was used"
            ),
        ));
    }
    if let Some(r) = find(&Slot::is_marker) {
        return Err(marker_error(r));
    }
    if let Some(r) = find(&|s| s.config_words() != base.config_words()) {
        return Err(config_error(first, base, r, &slots[r]));
    }
    for (what, id) in [
        ("step_id", Slot::step_id as fn(&Slot) -> i64),
        ("parent_step_id", Slot::parent_step_id),
    ] {
        if let Some(r) = find(&|s| id(s) != id(base)) {
            return Err(Error::new(
                ErrorKind::InconsistentRanks,
                format!(
                    "{what}s differ across ranks: rank {first} passed {what} {}, rank {r} \
                     passed {what} {}; every rank must pass the same {what} (a rank is a step \
                     ahead or behind)",
                    id(base),
                    id(&slots[r])
                ),
            ));
        }
    }
    let (earliest, latest, last_rank) = (scan.earliest, scan.latest, scan.last_rank);
    Ok(Checked {
        settings: base.settings(),
        step_id: base.step_id(),
        parent_step_id: base.parent_step_id(),
        last_rank: last_rank as i32,
        arrival_skew_ns: latest.saturating_sub(earliest),
    })
}

/// `!0` at the configuration words (1-8) and the step ids (9-12): what must equal the first
/// live rank's; 0 elsewhere.
const SAME: [u32; SLOT3_WORDS] = {
    let mut m = [0u32; SLOT3_WORDS];
    let mut i = at::LAYOUT;
    while i < at::ARRIVAL {
        m[i] = !0;
        i += 1;
    }
    m
};

/// The fast pass of [`check`], vertical (no per-slot horizontal work but the arrival time):
/// the live slots' words summed column by column, so that the checksums of every slot are
/// checked at once at the end (`sum(K[i] * column[i]) == live x CHECK_TARGET`, the weighted sums
/// being linear: a change of any one word of any one slot always breaks it; only changes in
/// several slots that cancel out escape it, with probability 2^-32, and a flagged step's walk
/// checks every slot alone); the words that must equal the first live rank's (xor, or); the
/// marker's first record word; the arrival time's extremes. Faults are only flagged here.
struct Scan {
    columns: [u32; SLOT3_WORDS],
    live: u32,
    marker: bool,
    diff: [u32; SLOT3_WORDS],
    earliest: i64,
    latest: i64,
    last_rank: usize,
}

impl Scan {
    fn new(first: usize) -> Scan {
        Scan {
            columns: [0; SLOT3_WORDS],
            live: 0,
            marker: false,
            diff: [0; SLOT3_WORDS],
            earliest: i64::MAX,
            latest: i64::MIN,
            last_rank: first,
        }
    }

    /// Scans the live slots `begin..end` against the first live rank's `base` (over the
    /// slots' flat words, the running values in locals, so that they stay in registers).
    #[inline(always)]
    fn run(&mut self, slots: &[Slot], begin: usize, end: usize, base: &Slot) {
        let words: &[u32] = bytemuck::cast_slice(&slots[begin..end]);
        let (mut columns, mut diff) = (self.columns, self.diff);
        let mut marker = self.marker;
        let (mut earliest, mut latest, mut last) = (self.earliest, self.latest, self.last_rank);
        for (r, w) in words.chunks_exact(SLOT3_WORDS).enumerate() {
            for i in 0..SLOT3_WORDS {
                columns[i] = columns[i].wrapping_add(w[i]);
                diff[i] |= (w[i] ^ base.opaque[i]) & SAME[i];
            }
            // The first record word: -1 only in the marker, and in no valid record.
            marker |= w[at::RECORD] == u32::MAX;
            let t = slots[begin + r].arrival_ns();
            earliest = earliest.min(t);
            if t > latest {
                (latest, last) = (t, begin + r);
            }
        }
        (self.columns, self.diff, self.marker) = (columns, diff, marker);
        (self.earliest, self.latest, self.last_rank) = (earliest, latest, last);
        self.live = self.live.wrapping_add((end - begin) as u32);
    }

    /// Whether every scanned slot's checksum holds (see [`Scan`]).
    fn intact(&self) -> bool {
        let sum = self
            .columns
            .iter()
            .zip(&WEIGHTS)
            .fold(0u32, |acc, (&w, &k)| acc.wrapping_add(w.wrapping_mul(k)));
        sum == self.live.wrapping_mul(CHECK_TARGET)
    }
}

/// The first live rank whose slot `fault` says is at fault.
fn slots_where(
    slots: &[Slot],
    live: Option<&[u8]>,
    fault: &dyn Fn(&Slot) -> bool,
) -> Option<usize> {
    (0..slots.len()).find(|&r| live.map_or(true, |l| l[r] != 0) && fault(&slots[r]))
}

/// The error for rank `r`'s configuration words differing from rank `first`'s: names the
/// first differing setting and both values.
fn config_error(first: usize, base: &Slot, r: usize, other: &Slot) -> Error {
    let what = if base.layout() != other.layout() {
        format!(
            "the slot layout differs: rank {first} carries {:#010x}, rank {r} carries {:#010x} \
             (this library writes {LAYOUT_TAG:#010x}: every rank must run the same dpcoord \
             0.x)",
            base.layout(),
            other.layout()
        )
    } else {
        let (a, b) = (
            base.settings().named_words(),
            other.settings().named_words(),
        );
        let (name, x, y) = a
            .iter()
            .zip(b)
            .find(|(x, y)| x.1 != y.1)
            .map_or(("configuration", 0, 0), |(x, y)| (x.0, x.1, y.1));
        format!(
            "{name} differs: rank {first} has {}, rank {r} has {}",
            x as i32, y as i32
        )
    };
    Error::new(
        ErrorKind::InconsistentRanks,
        format!(
            "the ranks' configurations differ: {what}; every rank must pass the same rules, \
             pad_policy, ubatch settings and graph table (a rank started with other settings)"
        ),
    )
}

/// The V1 decision over checked slots (`checked` from [`check`] over the same slots and
/// `live`), as `decide_with_options` decides over records; `out` as there.
#[inline(always)]
pub(crate) fn decide_v1(
    slots: &[Slot],
    dp_rank: i32,
    live: Option<&[u8]>,
    checked: &Checked,
    out: Option<&mut [i32]>,
) -> Result<Decision> {
    let summary = summary_of(slots, live)?;
    let own = slots[dp_rank as usize].v1_record();
    let n = match checked.settings.num_ubatches {
        0 => DEFAULT_NUM_UBATCHES,
        n => n,
    };
    let decision = decide_summary(&summary, own, slots.len(), checked.settings.pad_policy, n)?;
    if let (Some(out), true) = (out, decision.has_num_tokens_after_padding) {
        fill_after_padding(out, live, decision.should_dp_pad, summary.max_padded, |r| {
            slots[r].v1_record().num_tokens_padded
        });
    }
    Ok(decision)
}

/// The V2 decision over checked slots (`checked` from [`check`] over the same slots and
/// `live`) with this rank's graph table, which must be the one every slot names (its hash);
/// `out` as in [`super::decide_v2`].
#[inline(always)]
pub(crate) fn decide_v2(
    slots: &[Slot],
    dp_rank: i32,
    live: Option<&[u8]>,
    checked: &Checked,
    table: Option<&GraphTable>,
    out: Option<&mut [i32]>,
) -> Result<Agreement> {
    let mine = table.map_or(0, GraphTable::hash);
    if mine != checked.settings.graphs {
        return Err(invalid!(
            "the graph table given here (hash {mine:#010x}) is not the one the slots were made \
             with (hash {:#010x}; 0 = no table): decide with the table the rank made its slot \
             with",
            checked.settings.graphs
        ));
    }
    let cfg = v2_config(&checked.settings);
    decide_v2_with(slots.len(), dp_rank, live, &cfg, table, out, |r| {
        slots[r].record()
    })
}

/// The [`Summary`] of the live slots' V1 records, folded in place and vertically: the record's
/// words 16-19 (padded, the two flags, the mode: the third vector's first lanes) into lane-wise
/// min and max, word 15 (unpadded) and `unpadded - padded` (the max of which says whether
/// every padded count is at least its unpadded one) beside them, as `rules::v1`'s pass folds
/// the same fields.
#[inline(always)]
fn summary_of(slots: &[Slot], live: Option<&[u8]>) -> Result<Summary> {
    let mut lo = [i32::MAX; 8];
    let mut hi = [i32::MIN; 8];
    let (mut lo_unpadded, mut hi_excess) = (i32::MAX, i32::MIN);
    let mut fold = |s: &Slot| {
        let [_, b, c] = s.thirds();
        let c: [i32; 8] = bytemuck::cast(*c);
        let unpadded = b[7] as i32;
        lo = std::array::from_fn(|j| lo[j].min(c[j]));
        hi = std::array::from_fn(|j| hi[j].max(c[j]));
        lo_unpadded = lo_unpadded.min(unpadded);
        hi_excess = hi_excess.max(unpadded.wrapping_sub(c[0]));
    };
    match live {
        None => slots.iter().for_each(&mut fold),
        Some(live) => {
            for (begin, end) in (LiveRuns { live, r: 0 }) {
                slots[begin..end].iter().for_each(&mut fold);
            }
        }
    }
    let acc = Acc::of_fields(
        [lo_unpadded, lo[0], lo[1], lo[2], lo[3]],
        [hi_excess, hi[0], hi[1], hi[2], hi[3]],
    );
    Summary::from_acc(&acc, slots.len(), live, |r| slots[r].v1_record())
}

/// Checks `live` against the slots (`dp_size` bytes, 0 or 1, `dp_rank` live) and `dp_rank`.
pub(crate) fn check_shape(slots: &[Slot], dp_rank: i32, live: Option<&[u8]>) -> Result<()> {
    super::check_decide_args(
        slots.len() as i64,
        dp_rank,
        super::DP_PAD_POLICY_EXPLICIT,
        DEFAULT_NUM_UBATCHES,
    )?;
    match live {
        Some(live) => check_active_ranks(live, slots.len(), dp_rank),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
