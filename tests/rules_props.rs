//! `rules::decide` and `rules::make_record` against a second, deliberately naive implementation
//! written straight from docs/ARCHITECTURE.md ("Semantics"), over random inputs (some of them invalid).
//!
//! The model builds vLLM's `[5, dp_size]` matrix and reads every rule off it with
//! `iter().all/min/max`; it allocates freely and favours the obvious over the fast.

use dpcoord::rules::{decide, make_record, Decision, RankRecord, Request, UbatchConfig};
use dpcoord::{Error, ErrorKind};
use proptest::prelude::*;

const CASES: u32 = 2000;
const SENTINEL: i32 = -777;

/// The error kinds section 1 distinguishes (the status a C caller sees).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InvalidArgument,
    InconsistentRanks,
}

fn kind(e: &Error) -> Kind {
    match e {
        Error {
            kind: ErrorKind::InvalidArgument,
            ..
        } => Kind::InvalidArgument,
        Error {
            kind: ErrorKind::InconsistentRanks,
            ..
        } => Kind::InconsistentRanks,
        other => panic!("plan returned a non-plan error: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The naive model
// ---------------------------------------------------------------------------------------

/// What section 1 says the decision is; `array` is `None` when no per-rank array exists.
#[derive(Debug, PartialEq)]
struct Expected {
    should_ubatch: bool,
    should_dp_pad: bool,
    synced_cudagraph_mode: i64,
    self_tokens: i64,
    max_padded: i64,
    min_unpadded: i64,
    array: Option<Vec<i64>>,
}

/// The local step, read off the table of section 1.
fn model_make_record(req: &Request) -> Result<[i64; 5], Vec<&'static str>> {
    let mut bad = Vec::new();
    if req.num_tokens_unpadded < 0 {
        bad.push("num_tokens_unpadded");
    }
    if !(req.num_tokens_padded == -1 || req.num_tokens_padded >= req.num_tokens_unpadded) {
        bad.push("num_tokens_padded");
    }
    let uniform_ok = match req.uniform_decode {
        0 | 1 => true,
        -1 => !req.allow_microbatching,
        _ => false,
    };
    if !uniform_ok {
        bad.push("uniform_decode");
    }
    if ![0, 1, 2].contains(&req.cudagraph_mode) {
        bad.push("cudagraph_mode");
    }
    if ![0, 1].contains(&req.pad_policy) {
        bad.push("pad_policy");
    }
    if req.ubatch.enabled {
        if req.ubatch.num_ubatches < 2 {
            bad.push("num_ubatches");
        }
        // The threshold rule (0.2): both thresholds >= num_ubatches.
        if req.ubatch.decode_token_threshold < req.ubatch.num_ubatches {
            bad.push("decode_token_threshold");
        }
        if req.ubatch.prefill_token_threshold < req.ubatch.num_ubatches {
            bad.push("prefill_token_threshold");
        }
    }
    if req.timeout_ms < 0 {
        bad.push("timeout_ms");
    }
    if !bad.is_empty() {
        return Err(bad);
    }
    // `uniform_decode ? decode_threshold : prefill_threshold`, C truthiness.
    let threshold = if req.uniform_decode != 0 {
        req.ubatch.decode_token_threshold
    } else {
        req.ubatch.prefill_token_threshold
    };
    let attempt =
        req.allow_microbatching && req.ubatch.enabled && req.num_tokens_unpadded >= threshold;
    let padded = if req.num_tokens_padded == -1 {
        req.num_tokens_unpadded
    } else {
        req.num_tokens_padded
    };
    Ok([
        i64::from(req.num_tokens_unpadded),
        i64::from(padded),
        i64::from(attempt),
        i64::from(req.allow_dp_padding),
        i64::from(req.cudagraph_mode),
    ])
}

/// The decision, read off vLLM's `[5, dp_size]` matrix.
fn model_decide(
    records: &[RankRecord],
    dp_rank: i32,
    pad_policy: i32,
    num_ubatches: i32,
) -> Result<Expected, Kind> {
    let dp_size = records.len();
    // matrix[field][rank], fields in wire order.
    let matrix: Vec<Vec<i64>> = vec![
        records
            .iter()
            .map(|r| i64::from(r.num_tokens_unpadded))
            .collect(),
        records
            .iter()
            .map(|r| i64::from(r.num_tokens_padded))
            .collect(),
        records
            .iter()
            .map(|r| i64::from(r.should_attempt_ubatch))
            .collect(),
        records
            .iter()
            .map(|r| i64::from(r.should_attempt_dp_pad))
            .collect(),
        records
            .iter()
            .map(|r| i64::from(r.cudagraph_mode))
            .collect(),
    ];
    let (unpadded, padded, ubatch, dp_pad, mode) =
        (&matrix[0], &matrix[1], &matrix[2], &matrix[3], &matrix[4]);

    // Invalid arguments.
    let records_ok = (0..dp_size).all(|r| {
        unpadded[r] >= 0
            && padded[r] >= unpadded[r]
            && (ubatch[r] == 0 || ubatch[r] == 1)
            && (dp_pad[r] == 0 || dp_pad[r] == 1)
            && (0..=2).contains(&mode[r])
    });
    let args_ok = dp_size >= 1
        && dp_rank >= 0
        && (dp_rank as usize) < dp_size
        && (pad_policy == 0 || pad_policy == 1)
        && num_ubatches >= 2;
    if !records_ok || !args_ok {
        return Err(Kind::InvalidArgument);
    }
    let me = dp_rank as usize;

    // vLLM's early exit.
    if dp_size == 1 {
        return Ok(Expected {
            should_ubatch: false,
            should_dp_pad: false,
            synced_cudagraph_mode: mode[0],
            self_tokens: padded[0],
            max_padded: padded[0],
            min_unpadded: unpadded[0],
            array: None,
        });
    }

    let synced_mode = *mode.iter().min().unwrap();
    let max_padded = *padded.iter().max().unwrap();
    let min_unpadded = *unpadded.iter().min().unwrap();
    let n = i64::from(num_ubatches);
    let last_ubatch_empty = (max_padded / n) * (n - 1) >= min_unpadded;
    let should_ubatch = ubatch.iter().all(|&f| f == 1) && !last_ubatch_empty;
    let mut should_dp_pad = if pad_policy == 0 {
        let all_pad = dp_pad.iter().all(|&f| f == 1);
        let none_pad = dp_pad.iter().all(|&f| f == 0);
        if !all_pad && !none_pad {
            return Err(Kind::InconsistentRanks);
        }
        all_pad
    } else {
        synced_mode != 0
    };
    if should_ubatch {
        should_dp_pad = true;
    }
    let array: Vec<i64> = (0..dp_size)
        .map(|r| if should_dp_pad { max_padded } else { padded[r] })
        .collect();
    Ok(Expected {
        should_ubatch,
        should_dp_pad,
        synced_cudagraph_mode: synced_mode,
        self_tokens: array[me],
        max_padded,
        min_unpadded,
        array: Some(array),
    })
}

/// The real decision in the model's shape, given the array `decide` wrote.
fn observed(d: &Decision, out: &[i32]) -> Expected {
    Expected {
        should_ubatch: d.should_ubatch,
        should_dp_pad: d.should_dp_pad,
        synced_cudagraph_mode: i64::from(d.synced_cudagraph_mode),
        self_tokens: i64::from(d.num_tokens_after_padding_self),
        max_padded: i64::from(d.max_num_tokens_padded),
        min_unpadded: i64::from(d.min_num_tokens_unpadded),
        array: d
            .has_num_tokens_after_padding
            .then(|| out.iter().map(|&v| i64::from(v)).collect()),
    }
}

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

/// Per-record randomness; the case-level knobs below turn it into a record.
#[derive(Debug, Clone)]
struct RawRecord {
    unpadded_jitter: u32,
    padding: u32,
    ubatch: bool,
    dp_pad: bool,
    mode: i32,
}

#[derive(Debug, Clone)]
struct Case {
    /// Smallest unpadded count of the step; near i32::MAX in some cases.
    base: i32,
    /// How far unpadded counts spread above `base`.
    spread: u32,
    /// The most non-DP padding a rank adds.
    max_padding: u32,
    /// 0: every rank attempts microbatching; 1: random per rank.
    ubatch_mix: u8,
    /// 0: every rank allows DP padding; 1: none does; 2: random per rank.
    pad_mix: u8,
    /// `None`: random per rank; `Some(m)`: every rank uses mode m.
    mode_all: Option<i32>,
    raw: Vec<RawRecord>,
    /// `(rank index seed, field, value seed)` of a record made invalid.
    corrupt: Option<(usize, u8, u8)>,
    dp_rank: i32,
    pad_policy: i32,
    num_ubatches: i32,
}

fn raw_record() -> impl Strategy<Value = RawRecord> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<bool>(),
        any::<bool>(),
        0..=2i32,
    )
        .prop_map(
            |(unpadded_jitter, padding, ubatch, dp_pad, mode)| RawRecord {
                unpadded_jitter,
                padding,
                ubatch,
                dp_pad,
                mode,
            },
        )
}

fn case() -> impl Strategy<Value = Case> {
    let base = prop_oneof![
        3 => 0..=4i32,
        6 => 0..=2_000i32,
        2 => 0..=100_000i32,
        1 => (i32::MAX - 1_000)..=i32::MAX,
    ];
    let spread = prop_oneof![2 => Just(0u32), 4 => 0..=64u32, 2 => 0..=5_000u32];
    let max_padding = prop_oneof![2 => Just(0u32), 4 => 0..=16u32, 1 => 0..=10_000u32];
    let mode_all = prop_oneof![2 => Just(None), 1 => (0..=2i32).prop_map(Some)];
    let corrupt = prop_oneof![
        9 => Just(None),
        1 => (any::<usize>(), 0..5u8, any::<u8>()).prop_map(Some),
    ];
    let dp_rank_seed = prop_oneof![
        30 => any::<u32>().prop_map(Ok),
        1 => prop_oneof![Just(-1), Just(i32::MIN), Just(i32::MAX), Just(64), Just(65)].prop_map(Err),
    ];
    let pad_policy =
        prop_oneof![20 => 0..=1i32, 1 => prop_oneof![Just(-1), Just(2), Just(i32::MAX)]];
    let num_ubatches = prop_oneof![20 => 2..=5i32, 1 => prop_oneof![Just(1), Just(0), Just(-1)]];
    let dp_size = prop_oneof![1 => Just(1usize), 3 => 2..=8usize, 4 => 1..=64usize];
    dp_size
        .prop_flat_map(move |dp_size| {
            (
                (base.clone(), spread.clone(), max_padding.clone()),
                (0..2u8, 0..3u8, mode_all.clone()),
                proptest::collection::vec(raw_record(), dp_size),
                corrupt.clone(),
                (
                    dp_rank_seed.clone(),
                    pad_policy.clone(),
                    num_ubatches.clone(),
                ),
            )
        })
        .prop_map(
            |(
                (base, spread, max_padding),
                (ubatch_mix, pad_mix, mode_all),
                raw,
                corrupt,
                (dp_rank_seed, pad_policy, num_ubatches),
            )| {
                // Out-of-range ranks (64 and 65 included) are out of range for every dp_size.
                let dp_rank = match dp_rank_seed {
                    Ok(seed) => (seed as usize % raw.len()) as i32,
                    Err(out_of_range) => out_of_range,
                };
                Case {
                    base,
                    spread,
                    max_padding,
                    ubatch_mix,
                    pad_mix,
                    mode_all,
                    raw,
                    corrupt,
                    dp_rank,
                    pad_policy,
                    num_ubatches,
                }
            },
        )
}

fn saturating_add(a: i32, b: u32) -> i32 {
    i32::try_from(i64::from(a) + i64::from(b)).unwrap_or(i32::MAX)
}

impl Case {
    fn records(&self) -> Vec<RankRecord> {
        let mut records: Vec<RankRecord> = self
            .raw
            .iter()
            .map(|raw| {
                let unpadded = saturating_add(self.base, raw.unpadded_jitter % (self.spread + 1));
                let padded = saturating_add(unpadded, raw.padding % (self.max_padding + 1));
                RankRecord {
                    num_tokens_unpadded: unpadded,
                    num_tokens_padded: padded,
                    should_attempt_ubatch: i32::from(self.ubatch_mix == 0 || raw.ubatch),
                    should_attempt_dp_pad: match self.pad_mix {
                        0 => 1,
                        1 => 0,
                        _ => i32::from(raw.dp_pad),
                    },
                    cudagraph_mode: self.mode_all.unwrap_or(raw.mode),
                }
            })
            .collect();
        if let Some((rank_seed, field, value_seed)) = self.corrupt {
            let rank = rank_seed % records.len();
            let r = &mut records[rank];
            let pick = |options: &[i32]| options[usize::from(value_seed) % options.len()];
            match field {
                0 => r.num_tokens_unpadded = pick(&[-1, -2, i32::MIN, -1000]),
                1 => {
                    r.num_tokens_padded = r.num_tokens_unpadded - 1 - i32::from(value_seed % 4);
                }
                2 => r.should_attempt_ubatch = pick(&[2, -1, i32::MAX, i32::MIN]),
                3 => r.should_attempt_dp_pad = pick(&[2, -1, i32::MAX, i32::MIN]),
                _ => r.cudagraph_mode = pick(&[-1, 3, i32::MAX, i32::MIN]),
            }
        }
        records
    }
}

/// Checks `decide` on `records` against the model, with and without an output array.
fn check_decide(
    records: &[RankRecord],
    dp_rank: i32,
    pad_policy: i32,
    num_ubatches: i32,
) -> Result<(), TestCaseError> {
    let want = model_decide(records, dp_rank, pad_policy, num_ubatches);
    let mut out = vec![SENTINEL; records.len()];
    let got = decide(records, dp_rank, pad_policy, num_ubatches, Some(&mut out));
    let without_array = decide(records, dp_rank, pad_policy, num_ubatches, None);
    prop_assert_eq!(&got, &without_array, "the array changed the scalars");
    match (&got, &want) {
        (Ok(d), Ok(w)) => {
            prop_assert_eq!(&observed(d, &out), w);
            if w.array.is_none() {
                prop_assert!(
                    out.iter().all(|&v| v == SENTINEL),
                    "array written: {:?}",
                    out
                );
            }
        }
        (Err(e), Err(k)) => {
            prop_assert_eq!(kind(e), *k, "{}", e);
            prop_assert!(out.iter().all(|&v| v == SENTINEL), "array written on error");
            if let Error {
                kind: ErrorKind::InconsistentRanks,
                message,
            } = e
            {
                check_names_a_disagreeing_pair(message, records)?;
            }
        }
        _ => prop_assert!(false, "decide {:?}, model {:?}", got, want),
    }
    Ok(())
}

/// The inconsistent-ranks message names a rank with flag 1 and a rank with flag 0.
fn check_names_a_disagreeing_pair(
    message: &str,
    records: &[RankRecord],
) -> Result<(), TestCaseError> {
    let named: Vec<(usize, i32)> = message
        .split("rank ")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let flag = rest[digits.len()..].strip_prefix(" has ")?.chars().next()?;
            Some((digits.parse().ok()?, flag.to_digit(10)? as i32))
        })
        .collect();
    prop_assert_eq!(named.len(), 2, "message {:?}", message);
    for &(rank, flag) in &named {
        prop_assert!(rank < records.len(), "message {:?}", message);
        prop_assert_eq!(
            records[rank].should_attempt_dp_pad,
            flag,
            "message {:?}",
            message
        );
    }
    prop_assert_ne!(named[0].1, named[1].1);
    Ok(())
}

fn request() -> impl Strategy<Value = Request> {
    let tokens = prop_oneof![
        12 => 0..=2_000i32,
        1 => prop_oneof![Just(-1), Just(i32::MIN), Just(i32::MAX)],
    ];
    // 0: -1 (default); 1: unpadded + extra; 2: a raw value, often below unpadded.
    let padded = (
        prop_oneof![3 => Just(0u8), 6 => Just(1u8), 1 => Just(2u8)],
        0..=64i32,
        prop_oneof![Just(-2), Just(i32::MIN), Just(i32::MAX), 0..=2_100i32],
    );
    let small = |good: std::ops::RangeInclusive<i32>, bad: Vec<i32>| prop_oneof![15 => good, 1 => proptest::sample::select(bad)];
    let uniform = prop_oneof![
        6 => 0..=1i32,
        2 => Just(-1),
        1 => proptest::sample::select(vec![2, -2, i32::MIN]),
    ];
    let threshold = prop_oneof![
        12 => 0..=1_000i32,
        1 => prop_oneof![Just(-1), Just(i32::MIN), Just(i32::MAX)],
    ];
    (
        (tokens, padded, any::<bool>(), any::<bool>()),
        (
            uniform,
            small(0..=2, vec![3, -1, i32::MAX]),
            small(0..=1, vec![2, -1]),
            small(0..=i32::MAX, vec![-1, i32::MIN]),
        ),
        (
            any::<bool>(),
            small(2..=5, vec![1, 0, -1]),
            threshold.clone(),
            threshold,
        ),
    )
        .prop_map(
            |(
                (unpadded, (padded_kind, extra, raw), allow_ub, allow_pad),
                (uniform, mode, policy, timeout),
                (enabled, n, decode, prefill),
            )| Request {
                num_tokens_unpadded: unpadded,
                num_tokens_padded: match padded_kind {
                    0 => -1,
                    1 => unpadded.saturating_add(extra),
                    _ => raw,
                },
                allow_microbatching: allow_ub,
                allow_dp_padding: allow_pad,
                uniform_decode: uniform,
                cudagraph_mode: mode,
                pad_policy: policy,
                ubatch: UbatchConfig {
                    enabled,
                    num_ubatches: n,
                    decode_token_threshold: decode,
                    prefill_token_threshold: prefill,
                },
                timeout_ms: timeout,
                ..Request::default()
            },
        )
}

/// A valid request with per-rank token counts and the step-wide settings given.
fn valid_request(shared: (i32, UbatchConfig), mine: (i32, i32, bool, bool, i32, i32)) -> Request {
    let (pad_policy, ubatch) = shared;
    let (unpadded, padding, allow_ub, allow_pad, uniform, mode) = mine;
    Request {
        num_tokens_unpadded: unpadded,
        num_tokens_padded: if padding < 0 { -1 } else { unpadded + padding },
        allow_microbatching: allow_ub,
        allow_dp_padding: allow_pad,
        uniform_decode: if allow_ub { uniform.max(0) } else { uniform },
        cudagraph_mode: mode,
        pad_policy,
        ubatch,
        ..Request::default()
    }
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

/// The generators reach every outcome often enough for the properties to mean something.
#[test]
fn generators_cover_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let (mut ubatch, mut pad, mut no_pad, mut single) = (0, 0, 0, 0);
    let (mut invalid, mut inconsistent, mut boundary) = (0, 0, 0);
    let strategy = case();
    for _ in 0..CASES {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        let records = case.records();
        match model_decide(&records, case.dp_rank, case.pad_policy, case.num_ubatches) {
            Ok(e) if e.array.is_none() => single += 1,
            Ok(e) => {
                ubatch += usize::from(e.should_ubatch);
                pad += usize::from(e.should_dp_pad);
                no_pad += usize::from(!e.should_dp_pad);
                let n = i64::from(case.num_ubatches);
                boundary += usize::from(((e.max_padded / n) * (n - 1) - e.min_unpadded).abs() <= 2);
            }
            Err(Kind::InvalidArgument) => invalid += 1,
            Err(Kind::InconsistentRanks) => inconsistent += 1,
        }
    }
    let counts = [
        ("ubatch", ubatch),
        ("pad", pad),
        ("no pad", no_pad),
        ("dp_size 1", single),
        ("invalid", invalid),
        ("inconsistent", inconsistent),
        ("within 2 of the ubatch boundary", boundary),
    ];
    eprintln!("case outcomes over {CASES}: {counts:?}");
    for (what, count) in counts {
        assert!(
            count >= 20,
            "only {count} of {CASES} cases: {what}; all: {counts:?}"
        );
    }

    let (mut attempted, mut rejected) = (0, 0);
    let strategy = request();
    for _ in 0..CASES {
        let req = strategy.new_tree(&mut runner).unwrap().current();
        match model_make_record(&req) {
            Ok(record) => attempted += usize::from(record[2] == 1),
            Err(_) => rejected += 1,
        }
    }
    eprintln!("requests over {CASES}: {attempted} attempt microbatching, {rejected} rejected");
    assert!(
        attempted >= 50 && (200..=1500).contains(&rejected),
        "{attempted} attempted, {rejected} rejected"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn decide_matches_the_model(case in case()) {
        let records = case.records();
        check_decide(&records, case.dp_rank, case.pad_policy, case.num_ubatches)?;
    }

    #[test]
    fn decide_matches_the_model_on_every_rank(case in case()) {
        // Same records, every rank in turn (smaller sets, so that this stays fast).
        let records: Vec<_> = case.records().into_iter().take(16).collect();
        for rank in 0..records.len() as i32 {
            check_decide(&records, rank, case.pad_policy, case.num_ubatches)?;
        }
    }

    #[test]
    fn decide_matches_the_model_at_the_ubatch_boundary(
        max_padded in prop_oneof![0..=4_096i32, (i32::MAX - 64)..=i32::MAX],
        n in 2..=5i32,
        delta in -2..=2i64,
        extra_ranks in proptest::collection::vec((0..=100u32, 0..=100u32), 0..=6),
        pad_policy in 0..=1i32,
    ) {
        // Rank 0 holds the maximum padded count, rank 1 the minimum unpadded one, which sits
        // within 2 of `(max_padded / n) * (n - 1)`; every rank attempts microbatching.
        let target = (i64::from(max_padded) / i64::from(n)) * i64::from(n - 1) + delta;
        let min_unpadded = target.clamp(0, i64::from(max_padded)) as i32;
        let mut records = vec![
            RankRecord {
                num_tokens_unpadded: max_padded,
                num_tokens_padded: max_padded,
                should_attempt_ubatch: 1,
                should_attempt_dp_pad: 0,
                cudagraph_mode: 2,
            },
            RankRecord {
                num_tokens_unpadded: min_unpadded,
                num_tokens_padded: min_unpadded,
                should_attempt_ubatch: 1,
                should_attempt_dp_pad: 0,
                cudagraph_mode: 1,
            },
        ];
        for (a, b) in extra_ranks {
            // Between the two, so that neither the minimum nor the maximum moves.
            let span = i64::from(max_padded) - i64::from(min_unpadded);
            let u = i64::from(min_unpadded) + span * i64::from(a) / 100;
            let p = u + (i64::from(max_padded) - u) * i64::from(b) / 100;
            records.push(RankRecord {
                num_tokens_unpadded: u as i32,
                num_tokens_padded: p as i32,
                should_attempt_ubatch: 1,
                should_attempt_dp_pad: 0,
                cudagraph_mode: 2,
            });
        }
        for rank in 0..records.len() as i32 {
            check_decide(&records, rank, pad_policy, n)?;
        }
    }

    #[test]
    fn make_record_matches_the_model(req in request()) {
        let got = make_record(&req);
        match (&got, model_make_record(&req)) {
            (Ok(r), Ok(w)) => {
                let got_words = [
                    r.num_tokens_unpadded,
                    r.num_tokens_padded,
                    r.should_attempt_ubatch,
                    r.should_attempt_dp_pad,
                    r.cudagraph_mode,
                ]
                .map(i64::from);
                prop_assert_eq!(got_words, w);
            }
            (Err(Error { kind: ErrorKind::InvalidArgument, message }), Err(bad)) => {
                prop_assert!(
                    bad.iter().any(|field| message.contains(&format!("{field} = "))),
                    "message {:?} names none of {:?}", message, bad
                );
            }
            (got, want) => prop_assert!(false, "make_record {:?}, model {:?}", got, want),
        }
    }

    #[test]
    fn every_rank_reaches_the_same_decision(
        shared in (
            0..=1i32,
            (any::<bool>(), 2..=5i32, 5..=64i32, 5..=1_024i32),
        ),
        ranks in proptest::collection::vec(
            (0..=2_048i32, -1..=32i32, any::<bool>(), any::<bool>(), -1..=1i32, 0..=2i32),
            1..=64,
        ),
        all_pad in prop_oneof![Just(Some(true)), Just(Some(false)), Just(None)],
        num_ubatches_from_config in any::<bool>(),
    ) {
        let (pad_policy, (enabled, n, decode, prefill)) = shared;
        let ubatch = UbatchConfig {
            enabled,
            num_ubatches: n,
            decode_token_threshold: decode,
            prefill_token_threshold: prefill,
        };
        let records: Vec<RankRecord> = ranks
            .iter()
            .map(|&(u, p, ub, pad, uniform, mode)| {
                let pad = all_pad.unwrap_or(pad);
                let req = valid_request((pad_policy, ubatch), (u, p, ub, pad, uniform, mode));
                make_record(&req).expect("a valid request")
            })
            .collect();
        let num_ubatches = if num_ubatches_from_config { n } else { 2 };
        let decisions: Vec<_> = (0..records.len() as i32)
            .map(|rank| {
                let mut out = vec![SENTINEL; records.len()];
                let d = decide(&records, rank, pad_policy, num_ubatches, Some(&mut out));
                (rank, d, out)
            })
            .collect();
        let (_, first, first_out) = &decisions[0];
        for (rank, d, out) in &decisions {
            prop_assert_eq!(out, first_out, "rank {} array", rank);
            match (d, first) {
                (Ok(d), Ok(f)) => {
                    prop_assert_eq!(
                        Decision { num_tokens_after_padding_self: 0, ..*d },
                        Decision { num_tokens_after_padding_self: 0, ..*f },
                        "rank {}", rank
                    );
                    if d.has_num_tokens_after_padding {
                        prop_assert_eq!(d.num_tokens_after_padding_self, out[*rank as usize]);
                    }
                }
                (Err(e), Err(f)) => prop_assert_eq!(e, f, "rank {}", rank),
                _ => prop_assert!(false, "rank {} {:?} vs rank 0 {:?}", rank, d, first),
            }
            // Valid requests only ever disagree on EXPLICIT pad flags.
            if let Err(e) = d {
                prop_assert_eq!(kind(e), Kind::InconsistentRanks);
                prop_assert!(pad_policy == 0 && all_pad.is_none());
            }
            check_decide(&records, *rank, pad_policy, num_ubatches)?;
        }
    }
}
