//! Unit tests of `rules::v2`: the request's cross-field rules, the configuration, the record,
//! and `decide_v2`'s arguments, record validation, dp_size 1 and the no-table branches.

use super::pass::MARKER;
use super::*;
use crate::error::ErrorKind;
use crate::rules::graphs::Graph;
use crate::rules::{UbatchConfig, DP_CUDAGRAPH_FULL, DP_CUDAGRAPH_PIECEWISE};

const SENTINEL: i32 = -777;

fn req(t: i32, r: i32, u: i32) -> Request {
    Request {
        rules: DP_RULES_VLLM_V2,
        num_tokens_unpadded: t,
        num_reqs: r,
        uniform_token_count: u,
        max_query_len: if u > 0 { u } else { -1 },
        ..Request::default()
    }
}

fn table() -> GraphTable {
    let pw = |t| Graph {
        mode: DP_CUDAGRAPH_PIECEWISE,
        num_tokens: t,
        num_reqs: -1,
        uniform_token_count: 0,
        max_query_len: -1,
        num_ubatches: 1,
        num_active_loras: 0,
    };
    let decode = |n, l| Graph {
        mode: DP_CUDAGRAPH_FULL,
        num_tokens: n,
        num_reqs: n,
        uniform_token_count: 1,
        num_active_loras: l,
        ..pw(n)
    };
    let twin = |n| Graph {
        num_ubatches: 2,
        ..decode(n, 0)
    };
    GraphTable::new(
        &[
            decode(8, 0),
            decode(32, 0),
            twin(32),
            decode(8, 2),
            pw(8),
            pw(32),
            pw(64),
        ],
        1,
    )
    .unwrap()
}

fn message<T: std::fmt::Debug>(r: Result<T>) -> String {
    let e = r.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    e.message
}

#[test]
fn request_rules_refuse_what_vllm_cannot_send() {
    assert!(
        req(0, 0, 0).validate().is_ok(),
        "zero tokens, zero requests"
    );
    assert!(req(4, 4, 1).validate().is_ok());
    assert!(req(1, 1, 1).validate().is_ok(), "the dummy batch");
    assert!(
        req(2, 8, 1).validate().is_ok(),
        "PCP: a share of the decodes"
    );
    assert!(req(40, 3, 0).validate().is_ok(), "prefill");
    let padded = Request {
        num_tokens_padded: 8,
        ..req(4, 4, 1)
    };
    assert!(message(padded.validate()).contains("num_tokens_padded = 8 must be -1"));
    assert!(message(req(5, 0, 0).validate()).contains("num_reqs = 0 must be >= 1"));
    assert!(message(req(0, 2, 0).validate()).contains("num_reqs = 2 must be 0"));
    assert!(message(req(3, 1, 4).validate()).contains("uniform_token_count = 4 needs"));
    assert!(message(req(-1, 0, 0).validate()).contains("num_tokens_unpadded = -1"));
    assert!(message(req(4, 4, -1).validate()).contains("uniform_token_count = -1"));
    let mql0 = Request {
        max_query_len: 0,
        ..req(4, 4, 0)
    };
    assert!(message(mql0.validate()).contains("max_query_len = 0"));
    // The V1-only fields are not read: any legal value passes.
    let v1_fields = Request {
        uniform_decode: -1,
        allow_microbatching: true,
        pad_policy: 1,
        allow_dp_padding: true,
        ..req(4, 4, 1)
    };
    assert!(v1_fields.validate().is_ok());
    // Under V1 the V2 checks do not run.
    let v1 = Request {
        rules: 0,
        num_tokens_padded: 8,
        ..req(0, 2, 0)
    };
    assert!(v1.validate().is_ok());
}

#[test]
fn config_raises_thresholds_as_vllm_and_normalises_when_off() {
    let t4 = GraphTable::new(&[], 4).unwrap();
    let on = Request {
        ubatch: UbatchConfig {
            enabled: true,
            num_ubatches: 2,
            decode_token_threshold: 2,
            prefill_token_threshold: 100,
        },
        ..req(4, 4, 1)
    };
    let c = V2Config::of(&on, Some(&t4));
    assert_eq!(
        c,
        V2Config {
            ubatch_enabled: true,
            num_ubatches: 2,
            decode_token_threshold: 8,
            prefill_token_threshold: 100,
            decode_query_len: 4,
        }
    );
    assert_eq!(
        V2Config::of(&on, None).decode_token_threshold,
        2,
        "dql 1: floor 2"
    );
    let off = Request {
        ubatch: UbatchConfig {
            enabled: false,
            num_ubatches: 7,
            decode_token_threshold: 1,
            prefill_token_threshold: 3,
        },
        ..req(4, 4, 1)
    };
    assert_eq!(
        V2Config::of(&off, None),
        V2Config::of(&req(4, 4, 1), None),
        "ignored fields do not change the configuration"
    );
    assert_eq!(V2Config::of(&off, None).num_ubatches, 1);
}

#[test]
fn record_rows_are_vllms() {
    let t = table();
    let mut r = Request {
        allow_skip_drafts: true,
        allow_microbatching: true,
        num_active_loras: 1,
        ..req(6, 6, 1)
    };
    let rec = make_v2_record(&r, Some(&t)).unwrap();
    assert_eq!(
        rec,
        V2Record {
            num_tokens: 6,
            cg_mode: DP_CUDAGRAPH_FULL,
            uniform_token_count: 1,
            max_query_len: 1,
            allow_ubatching: 0,
            num_reqs: 6,
            allow_skip_drafts: 1,
            num_active_loras: 2,
        },
        "ubatching needs the config enabled; LoRA 1 resolves to the captured case 2"
    );
    r.ubatch.enabled = true;
    r.need_eager = true;
    let rec = make_v2_record(&r, Some(&t)).unwrap();
    assert_eq!((rec.cg_mode, rec.allow_ubatching), (DP_CUDAGRAPH_NONE, 1));
    assert_eq!(
        rec.num_active_loras, 1,
        "need_eager keeps the caller's count"
    );
    // Without a table: the request's mode, NONE for zero tokens.
    let full = Request {
        cudagraph_mode: DP_CUDAGRAPH_FULL,
        ..req(6, 6, 1)
    };
    assert_eq!(
        make_v2_record(&full, None).unwrap().cg_mode,
        DP_CUDAGRAPH_FULL
    );
    let zero = Request {
        cudagraph_mode: DP_CUDAGRAPH_FULL,
        ..req(0, 0, 0)
    };
    assert_eq!(
        make_v2_record(&zero, None).unwrap().cg_mode,
        DP_CUDAGRAPH_NONE
    );
    let v1 = Request {
        rules: 0,
        ..req(6, 6, 1)
    };
    assert!(message(make_v2_record(&v1, None)).contains("rules = 0 must be 1"));
}

fn cfg() -> V2Config {
    V2Config::of(&req(1, 1, 1), None)
}

fn rec(t: i32, r: i32, u: i32, mode: i32) -> V2Record {
    V2Record {
        num_tokens: t,
        cg_mode: mode,
        uniform_token_count: u,
        max_query_len: if u > 0 { u } else { -1 },
        allow_ubatching: 0,
        num_reqs: r,
        allow_skip_drafts: 0,
        num_active_loras: 0,
    }
}

#[test]
fn decide_refuses_bad_arguments_and_leaves_out_untouched() {
    let good = [rec(4, 4, 1, 2), rec(8, 8, 1, 2)];
    let c = cfg();
    let mut out = [SENTINEL; 2];
    assert!(message(decide_v2(&[], 0, None, &c, None, None)).contains("dp_size = 0"));
    assert!(message(decide_v2(&good, 2, None, &c, None, Some(&mut out))).contains("dp_rank = 2"));
    let mut short = [SENTINEL; 1];
    assert!(
        message(decide_v2(&good, 0, None, &c, None, Some(&mut short)))
            .contains("out holds 1 entries")
    );
    assert!(message(decide_v2(&good, 0, Some(&[1]), &c, None, None)).contains("active_ranks"));
    assert!(
        message(decide_v2(&good, 0, Some(&[1, 2]), &c, None, None)).contains("active_ranks[1] = 2")
    );
    assert!(
        message(decide_v2(&good, 1, Some(&[1, 0]), &c, None, None)).contains("active_ranks[1] = 0")
    );
    let bad_cfg = V2Config {
        decode_query_len: 0,
        ..c
    };
    assert!(message(decide_v2(&good, 0, None, &bad_cfg, None, None)).contains("decode_query_len"));
    let bad_n = V2Config {
        ubatch_enabled: true,
        num_ubatches: 1,
        ..c
    };
    assert!(message(decide_v2(&good, 0, None, &bad_n, None, None)).contains("num_ubatches = 1"));
    assert_eq!(out, [SENTINEL; 2]);
}

#[test]
fn decide_names_the_first_bad_word_of_a_live_record() {
    let c = cfg();
    let ok = rec(4, 4, 1, 2);
    let cases = [
        (
            V2Record {
                num_tokens: -1,
                ..ok
            },
            "records[1].num_tokens = -1 must be >= 0",
        ),
        (V2Record { cg_mode: 3, ..ok }, "records[1].cg_mode = 3"),
        (V2Record { cg_mode: -1, ..ok }, "records[1].cg_mode = -1"),
        (
            V2Record {
                uniform_token_count: -2,
                ..ok
            },
            "records[1].uniform_token_count = -2",
        ),
        (
            V2Record {
                max_query_len: 0,
                ..ok
            },
            "records[1].max_query_len = 0",
        ),
        (
            V2Record {
                max_query_len: -3,
                ..ok
            },
            "records[1].max_query_len = -3",
        ),
        (
            V2Record {
                allow_ubatching: 2,
                ..ok
            },
            "records[1].allow_ubatching = 2",
        ),
        (V2Record { num_reqs: -1, ..ok }, "records[1].num_reqs = -1"),
        (
            V2Record {
                allow_skip_drafts: -1,
                ..ok
            },
            "records[1].allow_skip_drafts = -1",
        ),
        (
            V2Record {
                num_active_loras: -4,
                ..ok
            },
            "records[1].num_active_loras = -4",
        ),
        (MARKER, "records[1] is the invalid-request marker"),
    ];
    for (bad, needle) in cases {
        let mut out = [SENTINEL; 3];
        let m = message(decide_v2(&[ok, bad, ok], 0, None, &c, None, Some(&mut out)));
        assert!(m.contains(needle), "{m:?} lacks {needle:?}");
        assert_eq!(out, [SENTINEL; 3]);
        // Dead, it is neither read nor validated.
        let a = decide_v2(
            &[ok, bad, ok],
            0,
            Some(&[1, 0, 1]),
            &c,
            None,
            Some(&mut out),
        )
        .unwrap();
        assert_eq!(a.max_num_tokens, 4);
    }
    // The bad word is found anywhere in a long run (the vector pass and its tail).
    for at in [0, 5, 8, 37, 63] {
        let mut recs = vec![ok; 64];
        recs[at].max_query_len = 0;
        let m = message(decide_v2(
            &recs,
            1.min(63 - at as i32),
            None,
            &c,
            None,
            None,
        ));
        assert!(
            m.contains(&format!("records[{at}].max_query_len = 0")),
            "{m}"
        );
    }
}

#[test]
fn dp_size_one_is_the_own_descriptor_without_array() {
    let t = table();
    let mut out = [SENTINEL];
    let a = decide_v2(
        &[rec(5, 5, 1, 2)],
        0,
        None,
        &cfg(),
        Some(&t),
        Some(&mut out),
    )
    .unwrap();
    assert_eq!(a.graph, t.dispatch(5, 5, 1, 0, 1, 1));
    assert_eq!(a.graph.num_tokens, 8);
    assert!(!a.has_array && !a.padded && !a.eager && !a.idle);
    assert_eq!(
        (
            a.num_tokens_self,
            a.max_num_tokens,
            a.min_num_tokens,
            a.max_num_reqs
        ),
        (5, 5, 5, 5)
    );
    assert_eq!((a.uniform_token_count, a.max_query_len), (1, 1));
    assert_eq!(out, [SENTINEL], "no array: out untouched");
    // A NONE record (need_eager) stays NONE; zero tokens are idle, not eager.
    let a = decide_v2(&[rec(5, 5, 1, 0)], 0, None, &cfg(), Some(&t), None).unwrap();
    assert_eq!(a.graph, Descriptor::none(5, 5, 0, 1));
    assert!(a.eager);
    let a = decide_v2(&[rec(0, 0, 0, 0)], 0, None, &cfg(), Some(&t), None).unwrap();
    assert!(a.idle && !a.eager);
    // Without a table: the record's mode over its own inputs.
    let a = decide_v2(&[rec(5, 5, 1, 1)], 0, None, &cfg(), None, None).unwrap();
    assert_eq!(
        a.graph,
        Descriptor {
            mode: 1,
            num_tokens: 5,
            num_reqs: -1,
            uniform_token_count: 1,
            max_query_len: 1,
            num_ubatches: 1,
            num_active_loras: 0,
        }
    );
}

#[test]
fn without_a_table_everything_but_the_graph_is_agreed() {
    let c = V2Config {
        ubatch_enabled: true,
        num_ubatches: 2,
        decode_token_threshold: 2,
        prefill_token_threshold: 4,
        decode_query_len: 1,
    };
    let mut out = [SENTINEL; 2];
    // Padded branch: the synced mode over T*, the agreed uniform count and bound.
    let recs = [rec(3, 3, 1, 2), rec(6, 6, 1, 1)];
    let a = decide_v2(&recs, 0, None, &c, None, Some(&mut out)).unwrap();
    assert_eq!(
        a.graph,
        Descriptor {
            mode: 1,
            num_tokens: 6,
            num_reqs: -1,
            uniform_token_count: 1,
            max_query_len: 1,
            num_ubatches: 1,
            num_active_loras: 0,
        }
    );
    assert!(!a.eager && a.padded);
    assert_eq!(out, [6, 6]);
    // Microbatch branch: NONE with T* and the own request count, eager.
    let ub = |r: V2Record| V2Record {
        allow_ubatching: 1,
        ..r
    };
    let a = decide_v2(
        &[ub(recs[0]), ub(recs[1])],
        0,
        None,
        &c,
        None,
        Some(&mut out),
    )
    .unwrap();
    assert_eq!(a.graph, Descriptor::none(6, 3, 0, 2));
    assert!(a.eager && a.padded);
    assert_eq!(out, [6, 6]);
}

#[test]
fn agreements_format_themselves_for_the_log() {
    let a = Agreement {
        idle: false,
        graph: Descriptor {
            mode: DP_CUDAGRAPH_FULL,
            num_tokens: 40,
            num_reqs: 40,
            uniform_token_count: 1,
            max_query_len: -1,
            num_ubatches: 2,
            num_active_loras: 0,
        },
        eager: false,
        uniform_token_count: 1,
        max_query_len: 1,
        max_num_reqs: 40,
        skip_drafts: false,
        has_array: true,
        padded: true,
        num_tokens_self: 40,
        max_num_tokens: 40,
        min_num_tokens: 32,
    };
    assert_eq!(
        a.to_string(),
        "idle 0 graph FULL 40t/40r u1 q- x2 eager 0 uniform 1 mql 1 reqs 40 skip 0 tokens self \
         40 max 40 min 32 array 1 padded 1"
    );
    let pw = Descriptor {
        mode: DP_CUDAGRAPH_PIECEWISE,
        num_reqs: -1,
        uniform_token_count: 0,
        max_query_len: 4,
        num_ubatches: 1,
        num_active_loras: 3,
        ..a.graph
    };
    assert_eq!(pw.to_string(), "PIECEWISE 40t/r- u- q4 x1 l3");
    assert_eq!(
        Descriptor::none(7, 2, 0, 1).to_string(),
        "NONE 7t/2r u- q- x1"
    );
}

/// The one out-of-range word the pass lets through (module docs): a query bound of 0 next to
/// a live -1 and a live positive bound. The agreed bound is none, as for any legal value
/// there; without both neighbours, 0 is refused.
#[test]
fn a_zero_bound_hidden_by_a_none_bound_decides_as_none() {
    let c = cfg();
    let none = rec(4, 4, 0, 2);
    let one = rec(4, 4, 1, 2);
    let zero = V2Record {
        max_query_len: 0,
        ..none
    };
    let legal = V2Record {
        max_query_len: 7,
        ..none
    };
    let a = decide_v2(&[none, zero, one], 0, None, &c, None, None).unwrap();
    let b = decide_v2(&[none, legal, one], 0, None, &c, None, None).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.max_query_len, -1);
    for refused in [[one, zero, one], [none, zero, none], [zero, zero, zero]] {
        let m = message(decide_v2(&refused, 0, None, &c, None, None));
        assert!(m.contains("].max_query_len = 0"), "{m}");
    }
}
