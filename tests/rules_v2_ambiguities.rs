//! `VLLM_V2.md` section 6: where vLLM 0.34.0 is ambiguous, what dpcoord decides, one test
//! each (named 6.1 ... 6.11), through the public Rust API and tables built as vLLM does.

mod v2_common;

use dpcoord::rules::{
    decide_local_v2, decide_v2, make_v2_record, reuse_agreement, Descriptor, Prior, Request,
    V2Config, V2Record,
};
use dpcoord::ErrorKind;
use v2_common::{all, run, step, CgMode, Run, Step, VllmCfg, DEAD};

const PIECEWISE: i32 = 1;
const FULL: i32 = 2;

fn go(cfg: &VllmCfg, steps: &[Step]) -> Run {
    run(&cfg.build(), true, &all(steps)).expect("a valid step")
}

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

/// 6.1: `uniform_decode` is derived from the agreed uniform count and `decode_query_len`, so
/// the `ub-flag-mismatch` inputs (`[40t u1 D, 40t u1 not-D]`), on which vLLM's ranks split
/// differently, agree; the request's `uniform_decode` is not read.
#[test]
fn s6_1_uniform_decode_is_derived_so_ub_flag_mismatch_agrees() {
    let cfg = VllmCfg::e_dbo();
    let built = cfg.build();
    let table = built.table();
    let s = step(40, 40).u(1).b();
    let d = Request {
        uniform_decode: 1,
        ..s.request(built.dbo)
    };
    let not_d = Request {
        uniform_decode: 0,
        ..s.request(built.dbo)
    };
    let recs = [
        make_v2_record(&d, Some(&table)).unwrap(),
        make_v2_record(&not_d, Some(&table)).unwrap(),
    ];
    assert_eq!(recs[0], recs[1], "the flag is not on the wire");
    let c = V2Config::of(&d, Some(&table));
    for rank in 0..2 {
        let a = decide_v2(&recs, rank, None, &c, Some(&table), None).unwrap();
        assert_eq!(a.graph, full(40, 40, 1, 2), "rank {rank} microbatches");
    }
    // The agreed count is compared with decode_query_len: a count of 1 under q = 4 is not a
    // uniform decode, so the prefill threshold (512) applies and nothing microbatches.
    let spec = VllmCfg::e_dbo_spec4();
    let r = go(&spec, &[step(40, 40).u(1).b(), step(40, 40).u(1).b()]);
    for (_, a) in r.live() {
        assert_eq!(a.graph.num_ubatches, 1, "{a:?}");
    }
    let r = go(&spec, &[step(40, 10).u(4).b(), step(40, 10).u(4).b()]);
    for (_, a) in r.live() {
        assert_eq!(a.graph, full(40, 10, 4, 2));
    }
}

/// 6.2: every dispatch uses the rank's own request count, and dpcoord does not refuse a
/// request count above the tokens (PCP's sharded decodes send it). `reqs-exceed-graph`: the
/// rank whose 20 requests do not fit the agreed 16-request graph falls to PIECEWISE, the other
/// runs FULL, both 16 tokens, as in vLLM.
#[test]
fn s6_2_reqs_exceed_graph_is_stated_not_refused() {
    let r = go(&VllmCfg::e_base(), &[step(12, 20).u(1), step(16, 16).u(1)]);
    assert_eq!(r.at(0).graph.mode, PIECEWISE);
    assert_eq!(r.at(0).graph.num_tokens, 16);
    assert_eq!(r.at(1).graph, full(16, 16, 1, 1));
    assert_eq!(r.array(0), &[16, 16]);
    assert_eq!(r.array(1), &[16, 16]);
    assert_eq!(r.at(0).uniform_token_count, 1);
}

/// 6.3: the microbatch fallback is `2 x min(T) < graph tokens`, for every `n`, strict.
#[test]
fn s6_3_two_times_min_as_written() {
    let dbo = VllmCfg::e_dbo();
    // Equality keeps the graph (one microbatch all padding under FULL).
    let r = go(&dbo, &[step(32, 32).u(1).b(), step(64, 64).u(1).b()]);
    assert_eq!(r.at(0).graph, full(64, 64, 1, 2));
    // One token more drops it: eager microbatches padded to T*.
    let r = go(&dbo, &[step(32, 32).u(1).b(), step(65, 65).u(1).b()]);
    assert_eq!(r.at(0).graph, Descriptor::none(65, 32, 0, 2));
    assert!(r.at(0).eager && r.at(0).padded);
    assert_eq!(r.array(1), &[65, 65]);
    // n = 3: the factor is still 2 (3 x 24 = 72 would keep the twin of 56).
    let ub3 = VllmCfg::e_ub3();
    let r = go(&ub3, &[step(24, 24).u(1).b(), step(56, 56).u(1).b()]);
    assert_eq!(r.at(1).graph, Descriptor::none(56, 56, 0, 3));
    let r = go(&ub3, &[step(24, 24).u(1).b(), step(48, 48).u(1).b()]);
    assert_eq!(r.at(1).graph, full(48, 48, 1, 3));
}

/// 6.4: the microbatch branch ignores row 1: a rank with `need_eager`, or whose own dispatch
/// is NONE, still microbatches, and even eager microbatches pad every rank to `T*` (where the
/// eager branch would leave each rank unpadded).
#[test]
fn s6_4_microbatching_ignores_the_mode_row() {
    let dbo = VllmCfg::e_dbo();
    let r = go(&dbo, &[step(64, 64).u(1).b().e(), step(64, 64).u(1).b()]);
    assert_eq!(r.records[0].cg_mode, 0);
    assert_eq!(r.at(0).graph, full(64, 64, 1, 2));
    assert!(!r.at(0).eager);
    // r1's own dispatch is NONE (600 is above every graph); the step still microbatches.
    let r = go(&dbo, &[step(300, 300).u(1).b(), step(600, 600).u(1).b()]);
    assert_eq!(r.records[1].cg_mode, 0);
    assert_eq!(r.at(0).graph, Descriptor::none(600, 300, 0, 2));
    assert!(r.at(0).eager && r.at(0).padded);
    assert_eq!(r.array(0), &[600, 600], "padded to T*, not [300, 600]");
}

/// 6.5: when no graph takes `T*` with the agreed inputs, every rank runs eager padded to
/// `T*` and the agreement says not eager (`none-not-eager`, E-wide-decode).
#[test]
fn s6_5_none_but_not_eager() {
    let r = go(
        &VllmCfg::e_wide_decode(),
        &[step(100, 100).u(1), step(10, 1)],
    );
    for (rank, a) in r.live() {
        assert_eq!(a.graph.mode, 0, "rank {rank}");
        assert_eq!(a.graph.num_tokens, 100);
        assert!(!a.eager && a.padded, "{a:?}");
        assert_eq!(r.array(rank), &[100, 100]);
    }
}

/// 6.6: zero is not idle. All zero: idle, no array. One zero: every rank eager and unpadded.
/// vLLM's real idle rank sends the dummy batch (`1t/1r u1`) and is padded into the graph.
#[test]
fn s6_6_zero_is_not_idle() {
    let base = VllmCfg::e_base();
    let r = go(&base, &[step(0, 0), step(0, 0), step(0, 0)]);
    assert!(r.live().all(|(_, a)| a.idle && !a.has_array));
    let r = go(&base, &[step(0, 0), step(40, 40).u(1), step(9, 9).u(1)]);
    for (rank, a) in r.live() {
        assert!(!a.idle && a.eager && !a.padded, "rank {rank}");
        assert_eq!(r.array(rank), &[0, 40, 9]);
    }
    let r = go(
        &base,
        &[step(1, 1).u(1), step(40, 40).u(1), step(9, 9).u(1)],
    );
    for (rank, a) in r.live() {
        assert_eq!(a.graph, full(40, 40, 1, 1), "rank {rank}");
        assert_eq!(r.array(rank), &[40, 40, 40]);
    }
}

/// 6.7: a uniform count of 0 is none, a query bound of -1 is none; negative counts, a bound
/// of 0 (which vLLM's encoding never sends) and a uniform count vLLM would divide by zero on
/// are errors naming the field.
#[test]
fn s6_7_encodings() {
    let base = VllmCfg::e_base();
    let r = go(&base, &[step(9, 9).u(1), step(9, 9).q(1)]);
    assert_eq!(
        r.at(0).uniform_token_count,
        0,
        "a 0 next to a 1 is no agreement"
    );
    assert_eq!(r.at(0).max_query_len, 1);
    let r = go(&base, &[step(9, 9).u(1), step(9, 9)]);
    assert_eq!(r.at(0).max_query_len, -1, "-1 on one rank: none");
    let built = base.build();
    let table = built.table();
    for (bad, field) in [
        (
            Request {
                uniform_token_count: -1,
                ..step(9, 9).request(None)
            },
            "uniform_token_count = -1",
        ),
        (
            Request {
                max_query_len: 0,
                ..step(9, 9).request(None)
            },
            "max_query_len = 0",
        ),
        (
            Request {
                num_tokens_unpadded: -9,
                num_reqs: 0,
                ..step(9, 9).request(None)
            },
            "num_tokens_unpadded = -9",
        ),
        (
            Request {
                num_reqs: -1,
                ..step(9, 9).request(None)
            },
            "num_reqs = -1",
        ),
    ] {
        let e = make_v2_record(&bad, Some(&table)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains(field), "{}", e.message);
    }
    let ok = make_v2_record(&step(9, 9).u(1).request(None), Some(&table)).unwrap();
    let c = V2Config::of(&step(9, 9).request(None), Some(&table));
    let bad = V2Record {
        uniform_token_count: -1,
        ..ok
    };
    let e = decide_v2(&[ok, bad], 0, None, &c, Some(&table), None).unwrap_err();
    assert!(
        e.message.contains("records[1].uniform_token_count = -1"),
        "{}",
        e.message
    );
}

/// 6.8: dpcoord always drops the dead ranks given in `active_ranks` (vLLM does only with a
/// fault-tolerance config); their records are not read, and the array keeps full width: the
/// padded count on a dead slot when padding, 0 when eager.
#[test]
fn s6_8_dead_ranks_are_dropped_and_the_array_keeps_full_width() {
    let built = VllmCfg::e_ft().build();
    let with_dead = |steps: &[Option<Step>]| run(&built, true, steps).expect("valid");
    let r = with_dead(&[Some(step(9, 9).u(1)), None, Some(step(20, 20).u(1)), None]);
    assert_eq!(r.records[1], DEAD);
    assert_eq!(r.array(0), &[24, 24, 24, 24]);
    let r = with_dead(&[Some(step(9, 9).u(1).e()), None, Some(step(20, 20).u(1))]);
    assert_eq!(r.array(2), &[9, 0, 20]);
    assert!(r.at(2).eager);
    assert_eq!(r.at(2).min_num_tokens, 9);
}

/// 6.9: a local decision is rank-local by design: two ranks' local decisions differ.
#[test]
fn s6_9_local_decisions_differ_per_rank() {
    let built = VllmCfg::e_base().build();
    let table = built.table();
    let a0 = decide_local_v2(&step(9, 9).u(1).request(None), 2, 0, Some(&table), None).unwrap();
    let a1 = decide_local_v2(&step(300, 1).request(None), 2, 1, Some(&table), None).unwrap();
    assert_ne!(a0.graph.mode, a1.graph.mode);
    assert_ne!(a0.eager, a1.eager);
}

/// 6.10: stricter than vLLM, a draft's parent step id and the prior's step id, when both are
/// set, must be equal.
#[test]
fn s6_10_parent_step_id() {
    let built = VllmCfg::e_base().build();
    let r = run(&built, true, &all(&[step(9, 9).u(1), step(12, 12).u(1)])).unwrap();
    let table = built.table();
    let prior = |step_id| Prior {
        dp_size: 2,
        dp_rank: 0,
        step_id,
        agreement: r.at(0),
        array: Some(r.array(0)),
    };
    let draft = |parent| Request {
        parent_step_id: parent,
        ..Step {
            t: 16,
            ..step(9, 9).u(1)
        }
        .request(None)
    };
    let e = reuse_agreement(&prior(41), &draft(40), Some(&table), None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InconsistentRanks);
    assert!(
        e.message.contains("40") && e.message.contains("41"),
        "{}",
        e.message
    );
    for (s, p) in [(41, 41), (0, 40), (41, 0), (0, 0)] {
        assert!(reuse_agreement(&prior(s), &draft(p), Some(&table), None).is_ok());
    }
}

/// 6.11: the per-rank fields: an eager descriptor's tokens, a NONE descriptor's requests, and
/// the LoRA case; everything else is the same on every rank.
#[test]
fn s6_11_per_rank_descriptor_fields() {
    let lora = VllmCfg {
        lora_cases: vec![0, 1, 2, 4],
        ..VllmCfg::e_base()
    };
    let r = go(&lora, &[step(9, 9).u(1).loras(3), step(12, 12).u(1)]);
    assert_eq!(
        r.at(0).graph,
        Descriptor {
            num_active_loras: 4,
            ..full(16, 16, 1, 1)
        }
    );
    assert_eq!(r.at(1).graph, full(16, 16, 1, 1));
    let r = go(&lora, &[step(9, 9).u(1).e().loras(3), step(12, 12).u(1)]);
    assert_eq!(
        r.at(0).graph,
        Descriptor::none(9, 9, 3, 1),
        "own T, own R, own loras"
    );
    assert_eq!(r.at(1).graph, Descriptor::none(12, 12, 0, 1));
    let mut shared = r.at(0);
    let other = r.at(1);
    shared.graph = other.graph;
    shared.num_tokens_self = other.num_tokens_self;
    assert_eq!(shared, other, "every other field agrees");
    // Without LoRA graphs a count is not resolved; a wider table resolves it to its case.
    let none = VllmCfg {
        mode: CgMode::None,
        ..VllmCfg::e_base()
    };
    let r = go(&none, &[step(9, 9).loras(3), step(12, 12)]);
    assert_eq!(r.at(0).graph.num_active_loras, 3);
    assert_eq!(r.array(0), &[9, 12], "no graphs: every step eager");
    assert_eq!(r.at(0).graph.mode, 0);
}
