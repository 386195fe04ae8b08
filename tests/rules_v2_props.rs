//! `GraphTable::dispatch`, `make_v2_record` + `decide_v2` and `decide_local_v2` against a
//! second, deliberately naive implementation written from `VLLM_V2.md` (sections 1-2 and 3.2)
//! and vLLM 0.34.0's Python, over random vLLM configurations (tables built the way vLLM builds
//! them: random capture sizes, decode request counts, speculative lengths, adaptive
//! verification, twins, LoRA cases, every cudagraph mode) and random steps (dp 1-8, dead
//! ranks, every branch).
//!
//! The model is not the library's code: its manager builds vLLM's dictionaries literally (a
//! candidate list for every token count up to the largest size, decode tables expanded to one
//! entry per request count) from vLLM's own split into decode and token-keyed descriptors (the
//! builder's, not re-derived from the flat list); its decision builds the `7 x dp_size` matrix
//! from each rank's request, drops the dead columns and reads every rule off the rows with
//! `iter()`; None is `Option`, not an encoding. It allocates freely.

mod v2_common;

use std::collections::HashMap;

use dpcoord::rules::{
    decide_local_v2, decide_v2, make_v2_record, Agreement, Descriptor, Graph, GraphTable, V2Config,
    V2Record,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use v2_common::{Built, CgMode, Dbo, Step, VllmCfg, SENTINEL};

const NONE: i32 = 0;
const FULL: i32 = 2;

// ---------------------------------------------------------------------------------------
// The naive manager: vLLM's CudaGraphManager tables, literally.
// ---------------------------------------------------------------------------------------

struct Manager {
    captured: bool,
    lora_map: HashMap<i32, i32>,
    max_lora: i32,
    candidates: HashMap<(i32, i32), Vec<Graph>>,
    decode: HashMap<(i32, i32, i32), Vec<Graph>>,
}

impl Manager {
    fn new(b: &Built) -> Manager {
        // _build_lora_dispatch_map. dpcoord's table knows the LoRA cases only through its
        // graphs: with none captured (mode NONE, or no size left), it resolves nothing
        // (GraphTable's module docs), where vLLM would still map the count to a case.
        let cases: &[i32] = if b.graphs.is_empty() {
            &[]
        } else {
            &b.lora_cases
        };
        let mut with_lora: Vec<i32> = cases.iter().copied().filter(|&c| c > 0).collect();
        with_lora.sort();
        let mut lora_map = HashMap::new();
        if let Some(&max) = with_lora.last() {
            let mut idx = 0;
            for n in 1..=max {
                while with_lora[idx] < n {
                    idx += 1;
                }
                lora_map.insert(n, with_lora[idx]);
            }
        }
        // decode groups: sorted by tokens, extended by request count.
        let mut groups: HashMap<(i32, i32, i32), Vec<Graph>> = HashMap::new();
        for d in &b.decode {
            groups
                .entry((d.uniform_token_count, d.num_active_loras, d.num_ubatches))
                .or_default()
                .push(*d);
        }
        let mut decode = HashMap::new();
        for (key, mut group) in groups {
            group.sort_by_key(|d| d.num_tokens);
            let mut table: Vec<Graph> = Vec::new();
            for d in group {
                while table.len() < (d.num_reqs + 1) as usize {
                    table.push(d);
                }
            }
            decode.insert(key, table);
        }
        // token-keyed candidates: for every count up to a size, that size's graphs.
        let mut candidates: HashMap<(i32, i32), Vec<Graph>> = HashMap::new();
        for mode in [2, 1] {
            let mut mode_descs: Vec<Graph> = b
                .token_keyed
                .iter()
                .copied()
                .filter(|d| d.mode == mode)
                .collect();
            mode_descs.sort_by_key(|d| d.num_tokens);
            for &l in &b.lora_cases {
                let lora_descs: Vec<Graph> = mode_descs
                    .iter()
                    .copied()
                    .filter(|d| d.num_active_loras == l)
                    .collect();
                let mut start = 0;
                let mut i = 0;
                while i < lora_descs.len() {
                    let t = lora_descs[i].num_tokens;
                    let matching: Vec<Graph> = lora_descs
                        .iter()
                        .copied()
                        .filter(|d| d.num_tokens == t)
                        .collect();
                    for n in start..=t {
                        candidates.entry((n, l)).or_default().extend(&matching);
                    }
                    start = t + 1;
                    i += matching.len();
                }
            }
        }
        Manager {
            captured: !b.graphs.is_empty(),
            lora_map,
            max_lora: with_lora.last().copied().unwrap_or(0),
            candidates,
            decode,
        }
    }

    fn resolve(&self, n: i32) -> i32 {
        if n <= 0 || self.lora_map.is_empty() {
            return n;
        }
        *self.lora_map.get(&n).unwrap_or(&self.max_lora)
    }

    /// `dispatch(num_reqs, num_tokens, uniform, loras, max_query_len, num_ubatches)`.
    fn dispatch(
        &self,
        r: i32,
        t: i32,
        u: Option<i32>,
        loras: i32,
        mql: Option<i32>,
        n: i32,
    ) -> Descriptor {
        let eff = self.resolve(loras);
        if self.captured && t > 0 {
            let mut cands = self.candidates.get(&(t, eff)).cloned().unwrap_or_default();
            if let Some(u) = u {
                let empty = Vec::new();
                let dd = self.decode.get(&(u, eff, n)).unwrap_or(&empty);
                let k = (t + u - 1) / u;
                if (k as usize) < dd.len() {
                    cands.insert(0, dd[k as usize]);
                }
            }
            for d in cands {
                let ok = (d.uniform_token_count == 0 || Some(d.uniform_token_count) == u)
                    && (d.max_query_len == -1 || mql.is_some_and(|m| d.max_query_len >= m))
                    && (d.num_reqs == -1 || d.num_reqs >= r)
                    && d.num_tokens >= t
                    && d.num_active_loras == eff
                    && d.num_ubatches == n;
                if ok {
                    return Descriptor::of(&d);
                }
            }
        }
        Descriptor::none(t, r, eff, n)
    }
}

// ---------------------------------------------------------------------------------------
// The naive decision: the 7 x dp_size matrix.
// ---------------------------------------------------------------------------------------

/// What the model says a rank gets: the agreement and its array (None: no array).
#[derive(Debug, PartialEq)]
struct Expected {
    agreement: Agreement,
    array: Option<Vec<i32>>,
}

/// The shared configuration the model decides with (from the builder, not `V2Config`).
struct Cfg<'a> {
    manager: Option<&'a Manager>,
    /// The raised thresholds (builder), or None without microbatching.
    dbo: Option<Dbo>,
    dql: i32,
}

/// The rank's own descriptor (dispatch_cg_and_sync_dp step 1; without a manager, the
/// request's mode over its own inputs, NONE for 0 tokens).
fn own_desc(cfg: &Cfg, s: &Step, mode: i32) -> Descriptor {
    let u = (s.u > 0).then_some(s.u);
    let q = (s.q > 0).then_some(s.q);
    if s.e {
        return Descriptor::none(s.t, s.r, s.loras, 1);
    }
    match cfg.manager {
        Some(m) => m.dispatch(s.r, s.t, u, s.loras, q, 1),
        None if s.t == 0 || mode == NONE => Descriptor::none(s.t, s.r, s.loras, 1),
        None => Descriptor {
            mode,
            num_tokens: s.t,
            num_reqs: -1,
            uniform_token_count: s.u,
            max_query_len: s.q,
            num_ubatches: 1,
            num_active_loras: s.loras,
        },
    }
}

/// One rank's decision over every rank's step (`None` = dead), `mode` being the requests'
/// `cudagraph_mode` (used without a manager).
fn model(cfg: &Cfg, steps: &[Option<Step>], rank: usize, mode: i32) -> Expected {
    let dp = steps.len();
    let me = steps[rank].expect("live");
    let own = own_desc(cfg, &me, mode);
    if dp == 1 {
        let idle = me.t == 0;
        return Expected {
            agreement: Agreement {
                idle,
                graph: own,
                eager: !idle && own.mode == NONE,
                uniform_token_count: me.u,
                max_query_len: me.q,
                max_num_reqs: me.r,
                skip_drafts: me.s,
                has_array: false,
                padded: false,
                num_tokens_self: me.t,
                max_num_tokens: me.t,
                min_num_tokens: me.t,
            },
            array: None,
        };
    }
    // The columns (zero for a dead rank), rows 0-6.
    let mut rows = vec![vec![0i64; dp]; 7];
    for (r, s) in steps.iter().enumerate() {
        let Some(s) = s else { continue };
        let d = own_desc(cfg, s, mode);
        let col = [
            s.t,
            d.mode,
            s.u,
            s.q,
            i32::from(s.b && cfg.dbo.is_some()),
            s.r,
            i32::from(s.s),
        ];
        for (row, v) in rows.iter_mut().zip(col) {
            row[r] = i64::from(v);
        }
    }
    let full_row0: Vec<i32> = rows[0].iter().map(|&v| v as i32).collect();
    let live: Vec<usize> = (0..dp).filter(|&r| steps[r].is_some()).collect();
    let row = |i: usize| -> Vec<i64> { live.iter().map(|&r| rows[i][r]).collect() };
    let skip = row(6).iter().all(|&v| v == 1);
    let first_u = row(2)[0];
    let su = if first_u == 0 || row(2).iter().any(|&v| v != first_u) {
        None
    } else {
        Some(first_u as i32)
    };
    let smql = if row(3).iter().all(|&v| v != -1) {
        row(3).iter().max().map(|&v| v as i32)
    } else {
        None
    };
    let max_t = *row(0).iter().max().unwrap() as i32;
    let min_t = *row(0).iter().min().unwrap() as i32;
    let max_r = *row(5).iter().max().unwrap() as i32;
    let state = |graph: Descriptor, eager: bool, padded: bool, array: Vec<i32>| Expected {
        agreement: Agreement {
            idle: false,
            graph,
            eager,
            uniform_token_count: su.unwrap_or(0),
            max_query_len: smql.unwrap_or(-1),
            max_num_reqs: max_r,
            skip_drafts: skip,
            has_array: true,
            padded,
            num_tokens_self: array[rank],
            max_num_tokens: max_t,
            min_num_tokens: min_t,
        },
        array: Some(array),
    };
    if row(0).iter().all(|&v| v == 0) {
        return Expected {
            agreement: Agreement {
                idle: true,
                graph: Descriptor::none(0, 0, 0, 1),
                eager: false,
                uniform_token_count: su.unwrap_or(0),
                max_query_len: smql.unwrap_or(-1),
                max_num_reqs: max_r,
                skip_drafts: skip,
                has_array: false,
                padded: false,
                num_tokens_self: 0,
                max_num_tokens: 0,
                min_num_tokens: 0,
            },
            array: None,
        };
    }
    if row(4).iter().all(|&v| v == 1) {
        let d = cfg.dbo.expect("row 4 needs microbatching configured");
        let uniform_decode = su == Some(cfg.dql);
        let threshold = if uniform_decode {
            d.decode_threshold
        } else {
            d.prefill_threshold
        };
        if min_t >= threshold {
            let mut desc = cfg
                .manager
                .map(|m| m.dispatch(me.r, max_t, su, me.loras, None, d.num_ubatches));
            if desc.is_some_and(|x| 2 * i64::from(min_t) < i64::from(x.num_tokens)) {
                desc = None;
            }
            let desc = desc.unwrap_or(Descriptor::none(max_t, me.r, 0, d.num_ubatches));
            return state(desc, desc.mode == NONE, true, vec![desc.num_tokens; dp]);
        }
    }
    let synced_mode = *row(1).iter().min().unwrap() as i32;
    if synced_mode == NONE {
        let desc = Descriptor::none(me.t, me.r, own.num_active_loras, 1);
        return state(desc, true, false, full_row0);
    }
    let desc = match cfg.manager {
        Some(m) => m.dispatch(me.r, max_t, su, me.loras, smql, 1),
        None => Descriptor {
            mode: synced_mode,
            num_tokens: max_t,
            num_reqs: -1,
            uniform_token_count: su.unwrap_or(0),
            max_query_len: smql.unwrap_or(-1),
            num_ubatches: 1,
            num_active_loras: me.loras,
        },
    };
    state(desc, false, true, vec![desc.num_tokens; dp])
}

// ---------------------------------------------------------------------------------------
// Random configurations and steps.
// ---------------------------------------------------------------------------------------

fn sizes(max: i32, n: usize) -> impl Strategy<Value = Vec<i32>> {
    prop::collection::vec(1..=max, 1..=n)
}

fn vllm_cfg() -> impl Strategy<Value = VllmCfg> {
    (
        (
            prop::sample::select(CgMode::ALL.to_vec()),
            1..=300i32,
            16..=2048i32,
            0..=4i32,
            any::<bool>(),
        ),
        prop_oneof![
            Just(vec![0]),
            Just(vec![0, 1, 2, 4]),
            Just(vec![0, 3]),
            Just(vec![0, 1, 8]),
        ],
        prop::option::of((2..=4i32, 0..=64i32, 0..=700i32)),
        prop::option::of(sizes(2048, 24)),
        prop::option::of(sizes(300, 16)),
        prop::option::of(1..=1024i32),
        any::<bool>(),
    )
        .prop_map(
            |((mode, seqs, tokens, k, adaptive), loras, dbo, prefill, decode, mdt, eagle)| {
                VllmCfg {
                    mode,
                    max_num_seqs: seqs,
                    max_num_batched_tokens: tokens.max(seqs),
                    num_spec: k,
                    adaptive: adaptive && k > 0,
                    lora_cases: loras,
                    dbo: dbo.map(|(n, d, p)| Dbo {
                        num_ubatches: n,
                        decode_threshold: d.max(n),
                        prefill_threshold: p.max(n),
                    }),
                    prefill_sizes: prefill,
                    decode_sizes: decode,
                    max_decode_tokens: mdt,
                    eagle_draft: eagle,
                }
            },
        )
}

/// Token counts where the rules turn: every graph's tokens, its half and the neighbours, the
/// (raised) thresholds and their neighbours.
fn turning_points(cfg: &VllmCfg) -> Vec<i32> {
    let b = cfg.build();
    let mut v = vec![1, 2];
    for g in &b.graphs {
        v.extend([
            g.num_tokens,
            g.num_tokens + 1,
            g.num_tokens / 2,
            (g.num_tokens + 1) / 2,
        ]);
    }
    if let Some(d) = b.dbo {
        for t in [d.decode_threshold, d.prefill_threshold] {
            v.extend([t - 1, t, t + 1, 2 * t]);
        }
    }
    v.retain(|&t| t >= 1);
    v.sort_unstable();
    v.dedup();
    v
}

/// One rank's step, in the shapes a vLLM runner sends (decode, spec decode, the dummy batch,
/// prefill, a PCP share, zero, decodes at the case's `focus` turning point and at half of it,
/// prefills at any turning point), with random flags and LoRA count; `all_b` sets the
/// microbatching flag on every rank; `ub` favours the focus and half of it, LoRA count 0.
fn rank_step(
    dql: i32,
    turns: Vec<i32>,
    all_b: bool,
    ub: bool,
    focus: i32,
) -> impl Strategy<Value = Step> {
    let kinds = if ub {
        prop_oneof![4 => 5..=6u8, 1 => 0..9u8].boxed()
    } else {
        (0..9u8).boxed()
    };
    let max_loras = if ub { 0 } else { 9 };
    (
        kinds,
        1..=320i32,
        0..=900i32,
        prop::sample::select(vec![1, 2, 4, 5]),
        prop::sample::select(turns),
        (
            any::<bool>(),
            any::<bool>(),
            0..10u8,
            prop_oneof![3 => Just(0), 1 => 0..=max_loras],
        ),
    )
        .prop_map(move |(kind, r, extra, q, turn, (b, s, e, loras))| {
            let base = |t, r, u, mql| Step {
                t,
                r,
                u,
                q: mql,
                b: b || all_b,
                s,
                e: e == 0,
                loras,
            };
            let at = |t: i32| (t / dql).max(1);
            match kind {
                0 => base(r * dql, r, dql, dql),
                1 => base(r * q, r, q, q),
                2 => base(dql, 1, dql, dql),
                3 => base(
                    r + extra,
                    r,
                    0,
                    if extra % 3 == 0 { -1 } else { 1 + extra % 7 },
                ),
                4 => base((r / 4).max(1), r, 1, 1),
                5 => base(at(focus) * dql, at(focus), dql, dql),
                6 => base(at(focus / 2) * dql, at(focus / 2), dql, dql),
                7 => base(turn, 1 + (r - 1) % turn, 0, -1),
                _ => base(0, 0, 0, -1),
            }
        })
}

/// A configuration, a step (dp 1-8, some ranks dead), with or without the table, the
/// requests' `cudagraph_mode`. `ub`: microbatching configured, every rank allowing it, the
/// focus on a twin's size (the microbatch branch's boundaries).
fn case(ub: bool) -> impl Strategy<Value = (VllmCfg, Vec<Option<Step>>, bool, i32)> {
    let cfgs = vllm_cfg().prop_filter("microbatching configured", move |c| !ub || c.dbo.is_some());
    cfgs.prop_flat_map(move |cfg| {
        let dql = cfg.decode_query_len();
        let turns = turning_points(&cfg);
        let twins: Vec<i32> = cfg
            .build()
            .graphs
            .iter()
            .filter(|g| g.num_ubatches > 1)
            .map(|g| g.num_tokens)
            .collect();
        let focus = if ub && !twins.is_empty() {
            prop::sample::select(twins)
        } else {
            prop::sample::select(turns.clone())
        };
        let all_b = if ub {
            Just(true).boxed()
        } else {
            prop::bool::weighted(0.6).boxed()
        };
        (all_b, focus, Just(cfg)).prop_flat_map(move |(all_b, focus, cfg)| {
            (
                Just(cfg),
                prop::collection::vec(
                    prop::option::weighted(0.85, rank_step(dql, turns.clone(), all_b, ub, focus)),
                    1..=8,
                ),
                prop::bool::weighted(0.8),
                0..=2i32,
            )
        })
    })
}

/// The library's answer for `rank`: the agreement and the array it wrote (None: untouched).
fn library(
    built: &Built,
    table: Option<&GraphTable>,
    raw_dbo: Option<Dbo>,
    steps: &[Option<Step>],
    rank: usize,
    mode: i32,
) -> Expected {
    let dp = steps.len();
    let live: Vec<u8> = steps.iter().map(|s| u8::from(s.is_some())).collect();
    let req = |s: &Step| dpcoord::rules::Request {
        cudagraph_mode: mode,
        ..s.request(raw_dbo)
    };
    let records: Vec<V2Record> = steps
        .iter()
        .map(|s| match s {
            Some(s) => make_v2_record(&req(s), table).expect("a valid request"),
            None => v2_common::DEAD,
        })
        .collect();
    let me = req(&steps[rank].unwrap());
    let cfg = V2Config::of(&me, table);
    assert_eq!(
        cfg.decode_query_len,
        table.map_or(1, |_| built.decode_query_len)
    );
    let mut out = vec![SENTINEL; dp];
    let agreement = decide_v2(
        &records,
        rank as i32,
        live.contains(&0).then_some(&live[..]),
        &cfg,
        table,
        Some(&mut out),
    )
    .expect("a valid step");
    let written = out != vec![SENTINEL; dp];
    Expected {
        agreement,
        array: written.then_some(out),
    }
}

/// The model's configuration for `cfg` with or without the table. Without a table dpcoord's
/// decode_query_len is 1 (`V2Config::of`), and the thresholds are raised by n x 1: the model
/// follows that documented convention.
fn model_cfg<'a>(cfg: &VllmCfg, built: &Built, manager: Option<&'a Manager>) -> Cfg<'a> {
    let dql = if manager.is_some() {
        built.decode_query_len
    } else {
        1
    };
    let dbo = cfg.dbo.map(|d| Dbo {
        decode_threshold: d.decode_threshold.max(d.num_ubatches * dql),
        prefill_threshold: d.prefill_threshold.max(d.num_ubatches * dql),
        ..d
    });
    if manager.is_some() {
        assert_eq!(dbo, built.dbo, "the builder's raise is vLLM's");
    }
    Cfg { manager, dbo, dql }
}

/// Every live rank's decision against the model's.
fn check_decide(
    cfg: &VllmCfg,
    mut steps: Vec<Option<Step>>,
    with_table: bool,
    mode: i32,
) -> Result<(), TestCaseError> {
    if steps.iter().all(Option::is_none) {
        steps[0] = Some(Step {
            t: 0,
            r: 0,
            u: 0,
            q: -1,
            b: false,
            s: false,
            e: false,
            loras: 0,
        });
    }
    let built = cfg.build();
    let table = built.table();
    let manager = Manager::new(&built);
    let table = with_table.then_some(&table);
    let model_cfg = model_cfg(cfg, &built, with_table.then_some(&manager));
    let dp = steps.len();
    let mut run = v2_common::Run {
        records: Vec::new(),
        agreements: vec![None; dp],
        arrays: vec![None; dp],
    };
    for rank in (0..dp).filter(|&r| steps[r].is_some()) {
        let got = library(&built, table, cfg.dbo, &steps, rank, mode);
        let want = model(&model_cfg, &steps, rank, mode);
        prop_assert_eq!(&got, &want, "rank {} of {:?}", rank, steps);
        run.agreements[rank] = Some(got.agreement);
        run.arrays[rank] = Some(got.array.unwrap_or_else(|| vec![SENTINEL; dp]));
    }
    // The same step through the C host path (dp_make_slot, dp_decide_slots) on every rank.
    let reqs: Vec<Option<dpcoord::rules::Request>> = steps
        .iter()
        .map(|s| {
            s.map(|s| dpcoord::rules::Request {
                cudagraph_mode: mode,
                ..s.request(cfg.dbo)
            })
        })
        .collect();
    let graphs = with_table.then_some((&built.graphs[..], built.decode_query_len));
    v2_common::assert_host_path_agrees(graphs, &reqs, &run);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Every live rank's decision equals the model's, with and without a table.
    #[test]
    fn decide_matches_the_model((cfg, steps, with_table, mode) in case(false)) {
        check_decide(&cfg, steps, with_table, mode)?;
    }

    /// The same, every step attempting microbatching around a twin's size.
    #[test]
    fn decide_matches_the_model_when_microbatching((cfg, steps, with_table, mode) in case(true)) {
        check_decide(&cfg, steps, with_table, mode)?;
    }

    /// A local decision is the model's over dp_size copies of the rank's own step.
    #[test]
    fn local_matches_the_model_over_copies((cfg, steps, with_table, mode) in case(false)) {
        let Some(me) = steps.iter().flatten().next().copied() else { return Ok(()) };
        let built = cfg.build();
        let table = built.table();
        let manager = Manager::new(&built);
        let model_cfg = model_cfg(&cfg, &built, with_table.then_some(&manager));
        let dp = steps.len();
        let rank = dp / 2;
        let req = dpcoord::rules::Request { cudagraph_mode: mode, ..me.request(cfg.dbo) };
        let mut out = vec![SENTINEL; dp];
        let got = decide_local_v2(&req, dp as i32, rank as i32, with_table.then_some(&table), Some(&mut out))
            .expect("valid");
        let written = out != vec![SENTINEL; dp];
        let want = model(&model_cfg, &vec![Some(me); dp], rank, mode);
        prop_assert_eq!(Expected { agreement: got, array: written.then_some(out) }, want);
    }

    /// The dispatch equals the literal transcription on any query, including ones no runner
    /// sends (negative and zero counts, LoRA counts between and above the cases).
    #[test]
    fn dispatch_matches_the_model(
        cfg in vllm_cfg(),
        queries in prop::collection::vec(
            (-1..=600i32, -2..=2200i32, prop::option::of(1..=6i32), 0..=10i32,
             prop::option::of(1..=8i32), 1..=4i32),
            64,
        ),
    ) {
        let built = cfg.build();
        let table = built.table();
        let manager = Manager::new(&built);
        for (r, t, u, loras, mql, n) in queries {
            let got = table.dispatch(r, t, u.unwrap_or(0), loras, mql.unwrap_or(-1), n);
            let want = manager.dispatch(r, t, u, loras, mql, n);
            prop_assert_eq!(got, want, "query {:?}", (r, t, u, loras, mql, n));
        }
    }
}

/// The builder and the model see twins and every mode: the random configurations are not
/// all trivial.
#[test]
fn the_generators_reach_every_kind_of_table() {
    let mut twins = 0;
    let mut varlen = 0;
    let mut full_mixed = 0;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..300 {
        let cfg = vllm_cfg().new_tree(&mut runner).unwrap().current();
        let b = cfg.build();
        twins += b
            .graphs
            .iter()
            .filter(|g| g.num_ubatches > 1)
            .count()
            .min(1);
        varlen += b
            .graphs
            .iter()
            .filter(|g| g.max_query_len > 0)
            .count()
            .min(1);
        full_mixed += b
            .token_keyed
            .iter()
            .filter(|g| g.mode == FULL && g.num_ubatches == 1 && g.max_query_len < 0)
            .count()
            .min(1);
    }
    assert!(
        twins > 20 && varlen > 10 && full_mixed > 20,
        "{twins} {varlen} {full_mixed}"
    );
}
