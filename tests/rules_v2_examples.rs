//! Every worked example of `VLLM_V2.md` section 5 (vLLM 0.34.0's own outputs) through
//! `make_v2_record` + `decide_v2` (and the local and reuse functions), on every rank, with the
//! example's graph table built the way vLLM builds it (tests/v2_common). The slices of the
//! examples are another suite's (tests/slices*). Each test names its example.

mod v2_common;

use dpcoord::rules::{
    decide_local_v2, decide_v2, make_v2_record, reuse_agreement, uniform_draft_agreement,
    Agreement, Descriptor, Prior, V2Config, V2Record,
};
use dpcoord::ErrorKind;
use v2_common::{all, decode_grid, run, step, Built, CgMode, Run, Step, VllmCfg, SENTINEL};

const NONE: i32 = 0;
const PIECEWISE: i32 = 1;
const FULL: i32 = 2;

/// A FULL graph of `t` tokens, `r` requests, uniform count `u` (0 none), `n` microbatches.
fn full(t: i32, r: i32, u: i32, n: i32) -> Descriptor {
    Descriptor {
        mode: FULL,
        num_tokens: t,
        num_reqs: r,
        uniform_token_count: u,
        max_query_len: -1,
        num_ubatches: n,
        num_active_loras: 0,
    }
}

fn piecewise(t: i32) -> Descriptor {
    Descriptor {
        mode: PIECEWISE,
        num_tokens: t,
        num_reqs: -1,
        uniform_token_count: 0,
        max_query_len: -1,
        num_ubatches: 1,
        num_active_loras: 0,
    }
}

fn eager(t: i32, r: i32, n: i32) -> Descriptor {
    Descriptor::none(t, r, 0, n)
}

fn go(cfg: &VllmCfg, steps: &[Step]) -> Run {
    run(&cfg.build(), true, &all(steps)).expect("a valid step")
}

/// The agreement fields an example states (the state of vLLM's `DPSyncState`).
#[derive(Debug, PartialEq)]
struct State {
    across: Vec<i32>,
    uniform: i32,
    mql: i32,
    eager: bool,
    reqs: i32,
}

fn state(run: &Run, r: usize) -> State {
    let a = run.at(r);
    assert!(a.has_array && !a.idle, "rank {r}: {a:?}");
    State {
        across: run.array(r).to_vec(),
        uniform: a.uniform_token_count,
        mql: a.max_query_len,
        eager: a.eager,
        reqs: a.max_num_reqs,
    }
}

/// Every rank runs `graphs[r]` and holds the same state `want`.
fn check(run: &Run, graphs: &[Descriptor], want: &State) {
    for (r, a) in run.live() {
        assert_eq!(a.graph, graphs[r], "rank {r} descriptor");
        assert_eq!(&state(run, r), want, "rank {r} state");
        assert_eq!(a.num_tokens_self, run.array(r)[r], "rank {r} self");
    }
}

fn st(across: &[i32], uniform: i32, mql: i32, eager: bool, reqs: i32) -> State {
    State {
        across: across.to_vec(),
        uniform,
        mql,
        eager,
        reqs,
    }
}

#[test]
fn example_1_all_zero() {
    let r = go(&VllmCfg::e_base(), &[step(0, 0), step(0, 0)]);
    for (rank, a) in r.live() {
        assert!(a.idle && !a.has_array && !a.padded && !a.eager, "{a:?}");
        assert_eq!(a.graph, eager(0, 0, 1));
        assert_eq!(a.num_tokens_self, 0);
        assert_eq!(
            r.array(rank),
            &[SENTINEL, SENTINEL],
            "no array: out untouched"
        );
    }
}

#[test]
fn example_2_one_zero() {
    let r = go(&VllmCfg::e_base(), &[step(0, 0), step(40, 40).u(1)]);
    assert_eq!(r.records[0].cg_mode, NONE);
    assert_eq!(r.records[1].cg_mode, FULL, "own FULL 40");
    check(
        &r,
        &[eager(0, 0, 1), eager(40, 40, 1)],
        &st(&[0, 40], 0, -1, true, 40),
    );
    assert!(!r.at(0).padded && !r.at(0).idle);
}

#[test]
fn example_3_one_idle() {
    let dummy = step(1, 1).u(1);
    let r = go(
        &VllmCfg::e_base(),
        &[dummy, step(40, 40).u(1), step(9, 9).u(1)],
    );
    let rows: Vec<[i32; 7]> = r
        .records
        .iter()
        .map(|w| {
            [
                w.num_tokens,
                w.cg_mode,
                w.uniform_token_count,
                w.max_query_len,
                w.allow_ubatching,
                w.num_reqs,
                w.allow_skip_drafts,
            ]
        })
        .collect();
    // The reduced rows, column by column.
    assert_eq!(
        rows,
        vec![
            [1, 2, 1, 1, 0, 1, 0],
            [40, 2, 1, 1, 0, 40, 0],
            [9, 2, 1, 1, 0, 9, 0]
        ]
    );
    let g = full(40, 40, 1, 1);
    check(&r, &[g, g, g], &st(&[40, 40, 40], 1, 1, false, 40));
}

#[test]
fn example_4_decode_agreed_vs_disagreed() {
    let cfg = VllmCfg::e_base();
    let r = go(&cfg, &[step(3, 3).u(1), step(9, 9).u(1)]);
    let g = full(16, 16, 1, 1);
    check(&r, &[g, g], &st(&[16, 16], 1, 1, false, 9));
    // A prefill chunk on r1: no uniform count, no query bound.
    let r = go(&cfg, &[step(3, 3).u(1), step(7, 3)]);
    let g = piecewise(8);
    check(&r, &[g, g], &st(&[8, 8], 0, -1, false, 3));
}

#[test]
fn example_5_above_max() {
    let r = go(&VllmCfg::e_base(), &[step(600, 1), step(7, 7).u(1)]);
    assert_eq!(r.records[0].cg_mode, NONE, "600 is above 128");
    assert_eq!(r.records[1].cg_mode, FULL, "own FULL 8");
    check(
        &r,
        &[eager(600, 1, 1), eager(7, 7, 1)],
        &st(&[600, 7], 0, -1, true, 7),
    );
}

#[test]
fn example_6_none_not_eager() {
    let cfg = VllmCfg::e_wide_decode();
    let built = cfg.build();
    let table = built.table();
    assert_eq!(table.dispatch(100, 100, 1, 0, 1, 1), full(128, 128, 1, 1));
    let r = go(&cfg, &[step(100, 100).u(1), step(10, 1)]);
    assert_eq!(r.records[1].cg_mode, PIECEWISE, "own PIECEWISE 16");
    check(
        &r,
        &[eager(100, 100, 1), eager(100, 1, 1)],
        &st(&[100, 100], 0, -1, false, 100),
    );
    assert!(r.at(0).padded && r.at(1).padded);
    let r = go(&cfg, &[step(100, 100).u(1), step(10, 10).u(1)]);
    let g = full(128, 128, 1, 1);
    check(&r, &[g, g], &st(&[128, 128], 1, 1, false, 100));
}

#[test]
fn example_7_need_eager() {
    let r = go(&VllmCfg::e_base(), &[step(5, 5).u(1).e(), step(9, 9).u(1)]);
    assert_eq!(r.records[0].cg_mode, NONE);
    assert_eq!(r.records[1].cg_mode, FULL, "own FULL 16");
    check(
        &r,
        &[eager(5, 5, 1), eager(9, 9, 1)],
        &st(&[5, 9], 1, 1, true, 9),
    );
}

#[test]
fn example_8_varlen_agreed_vs_one_none() {
    let cfg = VllmCfg::e_varlen();
    let r = go(&cfg, &[step(9, 3).q(4), step(10, 4).q(4)]);
    let g = Descriptor {
        max_query_len: 4,
        ..full(10, 10, 0, 1)
    };
    check(&r, &[g, g], &st(&[10, 10], 0, 4, false, 4));
    let r = go(&cfg, &[step(9, 3).q(4), step(34, 2)]);
    assert_eq!(r.records[0].cg_mode, FULL, "r0's own FULL 10 is not used");
    let g = piecewise(40);
    check(&r, &[g, g], &st(&[40, 40], 0, -1, false, 3));
}

#[test]
fn example_9_ub_on_vs_ub_off_threshold() {
    let cfg = VllmCfg::e_dbo();
    let r = go(&cfg, &[step(32, 32).u(1).b(), step(40, 40).u(1).b()]);
    let g = full(40, 40, 1, 2);
    check(&r, &[g, g], &st(&[40, 40], 1, 1, false, 40));
    let r = go(&cfg, &[step(31, 31).u(1).b(), step(40, 40).u(1).b()]);
    let g = full(40, 40, 1, 1);
    check(&r, &[g, g], &st(&[40, 40], 1, 1, false, 40));
}

#[test]
fn example_10_ub_prefill_on_vs_off() {
    let cfg = VllmCfg::e_dbo();
    let r = go(&cfg, &[step(512, 11).b(), step(700, 1).b()]);
    check(
        &r,
        &[eager(700, 11, 2), eager(700, 1, 2)],
        &st(&[700, 700], 0, -1, true, 11),
    );
    assert!(
        r.at(0).padded,
        "eager microbatches still pad every rank to T*"
    );
    let r = go(&cfg, &[step(511, 11).b(), step(700, 1).b()]);
    check(
        &r,
        &[eager(511, 11, 1), eager(700, 1, 1)],
        &st(&[511, 700], 0, -1, true, 11),
    );
}

#[test]
fn example_11_ub_decode_vs_prefill() {
    let r = go(
        &VllmCfg::e_dbo(),
        &[step(40, 40).u(1).b(), step(50, 31).b()],
    );
    let g = piecewise(56);
    check(&r, &[g, g], &st(&[56, 56], 0, -1, false, 40));
}

#[test]
fn example_12_ub_idle_rank() {
    let r = go(
        &VllmCfg::e_dbo(),
        &[step(1, 1).u(1).b(), step(64, 64).u(1).b()],
    );
    let g = full(64, 64, 1, 1);
    check(&r, &[g, g], &st(&[64, 64], 1, 1, false, 64));
}

#[test]
fn example_13_ub_eager_fallback_and_ub_equal_2min() {
    let cfg = VllmCfg::e_dbo();
    assert_eq!(
        cfg.build().table().dispatch(32, 100, 1, 0, -1, 2),
        full(104, 104, 1, 2),
        "the twin for 100 has 104 tokens"
    );
    let r = go(&cfg, &[step(32, 32).u(1).b(), step(100, 100).u(1).b()]);
    check(
        &r,
        &[eager(100, 32, 2), eager(100, 100, 2)],
        &st(&[100, 100], 1, 1, true, 100),
    );
    let r = go(&cfg, &[step(32, 32).u(1).b(), step(64, 64).u(1).b()]);
    let g = full(64, 64, 1, 2);
    check(&r, &[g, g], &st(&[64, 64], 1, 1, false, 64));
}

#[test]
fn example_14_ub_need_eager() {
    let r = go(
        &VllmCfg::e_dbo(),
        &[step(64, 64).u(1).b().e(), step(64, 64).u(1).b()],
    );
    assert_eq!(r.records[0].cg_mode, NONE, "row 1 says NONE");
    let g = full(64, 64, 1, 2);
    check(&r, &[g, g], &st(&[64, 64], 1, 1, false, 64));
}

#[test]
fn example_15_ub3_narrow() {
    let r = go(
        &VllmCfg::e_ub3(),
        &[step(24, 24).u(1).b(), step(48, 48).u(1).b()],
    );
    let g = full(48, 48, 1, 3);
    check(&r, &[g, g], &st(&[48, 48], 1, 1, false, 48));
}

#[test]
fn example_16_spec4_ub_and_spec4_partial() {
    let cfg = VllmCfg::e_dbo_spec4();
    let r = go(&cfg, &[step(36, 9).u(4).b(), step(48, 12).u(4).b()]);
    let g = full(48, 12, 4, 2);
    check(&r, &[g, g], &st(&[48, 48], 4, 4, false, 12));
    let r = go(&cfg, &[step(80, 20).u(4).b(), step(45, 12).q(4).b()]);
    let g = piecewise(80);
    check(&r, &[g, g], &st(&[80, 80], 0, 4, false, 20));
}

#[test]
fn example_17_dead_rank() {
    let built = VllmCfg::e_ft().build();
    let r = run(
        &built,
        true,
        &[Some(step(9, 9).u(1)), None, Some(step(20, 20).u(1))],
    )
    .expect("a valid step");
    let g = full(24, 24, 1, 1);
    check(&r, &[g, g, g], &st(&[24, 24, 24], 1, 1, false, 20));
    assert_eq!(r.at(0).min_num_tokens, 9, "the dead slot takes no part");
}

/// `dead-rank-no-pc` is vLLM without a fault-tolerance config, where a dead rank's column
/// stays zero and takes part. dpcoord always drops the dead ranks the caller names in
/// `active_ranks`, and without `active_ranks` a dead rank never sends a record (the exchange
/// would not complete), so that form cannot arise. What would reproduce it, the dead rank's
/// zero column passed as a live record, is refused: its query bound 0 is no legal encoding.
#[test]
fn example_17_dead_rank_no_pc_does_not_apply() {
    let built = VllmCfg::e_ft().build();
    let table = built.table();
    let req = step(9, 9).u(1).request(None);
    let cfg = V2Config::of(&req, Some(&table));
    let records = [
        make_v2_record(&req, Some(&table)).unwrap(),
        V2Record::default(),
        make_v2_record(&step(20, 20).u(1).request(None), Some(&table)).unwrap(),
    ];
    let e = decide_v2(&records, 0, None, &cfg, Some(&table), None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(
        e.message.contains("records[1].max_query_len = 0"),
        "{}",
        e.message
    );
}

#[test]
fn example_18_skip_coordination() {
    let built = VllmCfg::e_base().build();
    let table = built.table();
    let local = |s: Step, rank: i32| {
        let mut out = [SENTINEL; 2];
        let a = decide_local_v2(&s.request(None), 2, rank, Some(&table), Some(&mut out))
            .expect("valid");
        (a, out)
    };
    let (a0, out0) = local(step(9, 9).u(1), 0);
    assert_eq!(a0.graph, full(16, 16, 1, 1));
    assert_eq!(out0, [16, 16]);
    assert!(!a0.eager && a0.padded);
    let (a1, out1) = local(step(300, 1), 1);
    assert_eq!(a1.graph, eager(300, 1, 1));
    assert_eq!(out1, [300, 300]);
    assert!(a1.eager);
}

#[test]
fn example_19_skip_drafts_one() {
    let cfg = VllmCfg::e_base();
    let g = full(16, 16, 1, 1);
    let r = go(&cfg, &[step(9, 9).u(1).s(), step(12, 12).u(1)]);
    for (_, a) in r.live() {
        assert!(!a.skip_drafts);
        assert_eq!(a.graph, g);
    }
    let r = go(&cfg, &[step(9, 9).u(1).s(), step(12, 12).u(1).s()]);
    for (_, a) in r.live() {
        assert!(a.skip_drafts);
        assert_eq!(a.graph, g);
    }
}

/// The drafter's decode table (`AutoregressiveSpeculator.init_cudagraph_manager`):
/// FULL_DECODE_ONLY, query length 1, the request-count grid up to `max_num_seqs`.
fn draft_decode_table(target: &VllmCfg) -> Built {
    VllmCfg {
        mode: CgMode::FullDecodeOnly,
        num_spec: 0,
        dbo: None,
        decode_sizes: Some(decode_grid(target.max_num_seqs)),
        ..target.clone()
    }
    .build()
}

/// The prior of rank `r` in `run`, as the reuse functions take it.
fn prior(run: &Run, r: usize, step_id: i64) -> Prior<'_> {
    Prior {
        dp_size: run.records.len() as i32,
        dp_rank: r as i32,
        step_id,
        agreement: run.at(r),
        array: Some(run.array(r)),
    }
}

#[test]
fn example_20_reuse() {
    let target = VllmCfg::e_dbo_spec4();
    let steps = [step(80, 20).u(4).b(), step(120, 30).u(4).b()];
    let r = go(&target, &steps);
    let g = full(120, 30, 4, 2);
    check(&r, &[g, g], &st(&[120, 120], 4, 4, false, 30));
    // The draft prefill manager: the target's configuration without a ubatch runner.
    let prefill = VllmCfg {
        dbo: None,
        ..target.clone()
    }
    .build()
    .table();
    let decode = draft_decode_table(&target).table();
    for (rank, s) in steps.iter().enumerate() {
        let p = prior(&r, rank, 5);
        let draft = Step { t: 120, ..*s }.request(None);
        let mut out = [SENTINEL; 2];
        let a = reuse_agreement(&p, &draft, Some(&prefill), Some(&mut out)).expect("valid");
        assert_eq!(a.graph, full(120, 30, 4, 1), "rank {rank}");
        assert_eq!(out, [120, 120]);
        assert_eq!(
            (
                a.uniform_token_count,
                a.max_query_len,
                a.eager,
                a.max_num_reqs
            ),
            (4, 4, false, 30)
        );
        let mut out = [SENTINEL; 2];
        let reqs = s.r.min(a.max_num_reqs);
        let d = uniform_draft_agreement(&p, reqs, 1, Some(&decode), Some(&mut out)).expect("valid");
        assert_eq!(d.graph, full(32, 32, 1, 1), "rank {rank}: T = 30 x 1");
        assert_eq!(out, [32, 32]);
        assert_eq!(
            (
                d.uniform_token_count,
                d.max_query_len,
                d.eager,
                d.max_num_reqs
            ),
            (1, 1, false, 30)
        );
    }
}

#[test]
fn example_20_reuse_eager() {
    let target = VllmCfg::e_spec4();
    let steps = [step(80, 20).u(4).e(), step(120, 30).u(4)];
    let r = go(&target, &steps);
    check(
        &r,
        &[eager(80, 20, 1), eager(120, 30, 1)],
        &st(&[80, 120], 4, 4, true, 30),
    );
    let table = target.build().table();
    let decode = draft_decode_table(&target).table();
    for (rank, s) in steps.iter().enumerate() {
        let p = prior(&r, rank, 0);
        let mut out = [SENTINEL; 2];
        let draft = Step { e: false, ..*s }.request(None);
        let a: Agreement =
            reuse_agreement(&p, &draft, Some(&table), Some(&mut out)).expect("valid");
        assert_eq!(a.graph, eager(s.t, s.r, 1), "rank {rank}: NONE (own T)");
        assert_eq!(out, [80, 120], "an eager prior is returned unchanged");
        assert!(a.eager);
        let mut out = [SENTINEL; 2];
        let d = uniform_draft_agreement(&p, s.r.min(30), 1, Some(&decode), Some(&mut out))
            .expect("valid");
        assert_eq!(d.graph, full(32, 32, 1, 1), "rank {rank}");
        assert_eq!(out, [32, 32]);
        assert!(!d.eager);
    }
}

// ---------------------------------------------------------------------------------------
// The same examples for the C++ suites
// ---------------------------------------------------------------------------------------

/// Every exchanged step of the examples above (inputs, table, and each rank's result as the
/// rules decide it, which the tests above hold to VLLM_V2.md) as C++ data:
/// `cpp_tests/common/v2_examples.inc`, which the GoogleTest suites replay through every
/// transport (host path, host group, GPU path). `DPCOORD_BLESS=1` rewrites the committed file.
#[test]
fn the_cpp_examples_file_is_generated_from_these_examples() {
    let examples: [(&str, fn()); 20] = [
        ("example_1_all_zero", example_1_all_zero),
        ("example_2_one_zero", example_2_one_zero),
        ("example_3_one_idle", example_3_one_idle),
        (
            "example_4_decode_agreed_vs_disagreed",
            example_4_decode_agreed_vs_disagreed,
        ),
        ("example_5_above_max", example_5_above_max),
        ("example_6_none_not_eager", example_6_none_not_eager),
        ("example_7_need_eager", example_7_need_eager),
        (
            "example_8_varlen_agreed_vs_one_none",
            example_8_varlen_agreed_vs_one_none,
        ),
        (
            "example_9_ub_on_vs_ub_off_threshold",
            example_9_ub_on_vs_ub_off_threshold,
        ),
        (
            "example_10_ub_prefill_on_vs_off",
            example_10_ub_prefill_on_vs_off,
        ),
        (
            "example_11_ub_decode_vs_prefill",
            example_11_ub_decode_vs_prefill,
        ),
        ("example_12_ub_idle_rank", example_12_ub_idle_rank),
        (
            "example_13_ub_eager_fallback_and_ub_equal_2min",
            example_13_ub_eager_fallback_and_ub_equal_2min,
        ),
        ("example_14_ub_need_eager", example_14_ub_need_eager),
        ("example_15_ub3_narrow", example_15_ub3_narrow),
        (
            "example_16_spec4_ub_and_spec4_partial",
            example_16_spec4_ub_and_spec4_partial,
        ),
        ("example_17_dead_rank", example_17_dead_rank),
        ("example_19_skip_drafts_one", example_19_skip_drafts_one),
        ("example_20_reuse", example_20_reuse),
        ("example_20_reuse_eager", example_20_reuse_eager),
    ];
    let mut text = String::from(
        "// GENERATED FILE: do not edit. VLLM_V2.md's worked examples (every exchanged step of\n\
         // tests/rules_v2_examples.rs: inputs, graph table, each rank's result), for the C++\n\
         // suites; regenerate with `DPCOORD_BLESS=1 cargo test --test rules_v2_examples`.\n",
    );
    let mut tables: Vec<(Vec<dpcoord::rules::Graph>, String)> = Vec::new();
    let mut cases = String::new();
    for (name, example) in examples {
        for (k, case) in v2_common::record_cases(example).into_iter().enumerate() {
            let graphs = &case.built.graphs;
            let table = match tables.iter().find(|(g, _)| g == graphs) {
                Some((_, id)) => id.clone(),
                None => {
                    let id = format!("kV2Table{}", tables.len());
                    text.push_str(&format!("static const dp_graph {id}[] = {{\n"));
                    for g in graphs {
                        text.push_str(&format!(
                            "    {{{}, {}, {}, {}, {}, {}, {}}},\n",
                            g.mode,
                            g.num_tokens,
                            g.num_reqs,
                            g.uniform_token_count,
                            g.max_query_len,
                            g.num_ubatches,
                            g.num_active_loras
                        ));
                    }
                    text.push_str("};\n");
                    tables.push((graphs.clone(), id.clone()));
                    id
                }
            };
            let dbo = case.built.dbo;
            cases.push_str(&format!(
                "    {{\"{name}/{k}\", {table}, {}, {}, {}, {{{}, {}, {}, {}}}, {}, {{\n",
                graphs.len(),
                case.built.decode_query_len,
                u8::from(case.with_table),
                u8::from(dbo.is_some()),
                dbo.map_or(2, |d| d.num_ubatches),
                dbo.map_or(32, |d| d.decode_threshold),
                dbo.map_or(512, |d| d.prefill_threshold),
                case.steps.len()
            ));
            for (r, step) in case.steps.iter().enumerate() {
                let Some(st) = step else {
                    cases.push_str("        {0},\n");
                    continue;
                };
                let a = case.agreements[r].expect("a live rank");
                let array = case.arrays[r].as_deref().expect("a live rank");
                let g = a.graph;
                let array: Vec<String> = array.iter().map(|v| v.to_string()).collect();
                cases.push_str(&format!(
                    "        {{1, {}, {}, {}, {}, {}, {}, {}, {}, {{{}, {}, {}, {}, {}, {}}}, {}, {}, {}, {}, \
                     {}, {}, {}, {}, {}, {}, {{{}}}}},\n",
                    st.t,
                    st.r,
                    st.u,
                    st.q,
                    u8::from(st.b),
                    u8::from(st.s),
                    u8::from(st.e),
                    st.loras,
                    g.mode,
                    g.num_tokens,
                    g.num_reqs,
                    g.uniform_token_count,
                    g.max_query_len,
                    g.num_ubatches,
                    u8::from(a.idle),
                    u8::from(a.eager),
                    u8::from(a.skip_drafts),
                    u8::from(a.padded),
                    u8::from(a.has_array),
                    a.uniform_token_count,
                    a.max_query_len,
                    a.max_num_reqs,
                    a.num_tokens_self,
                    a.max_num_tokens,
                    array.join(", ")
                ));
            }
            cases.push_str("    }},\n");
        }
    }
    text.push_str("static const V2Example kV2Examples[] = {\n");
    text.push_str(&cases);
    text.push_str("};\n");
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cpp_tests/common/v2_examples.inc");
    if std::env::var_os("DPCOORD_BLESS").is_some() {
        std::fs::write(&path, &text).expect("write v2_examples.inc");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "cpp_tests/common/v2_examples.inc differs from the examples: run \
         `DPCOORD_BLESS=1 cargo test --test rules_v2_examples`"
    );
}
