//! Unit tests of `rules::local`: each local decision equals the exchanged one over dp_size
//! copies of the rank's record; the reuse functions' checks, eager and re-padding cases, and
//! what they do with an idle or a dp_size-1 prior.

use super::*;
use crate::rules::graphs::Graph;
use crate::rules::v2::decide_v2;
use crate::rules::DP_PAD_POLICY_EXPLICIT;
use crate::rules::{
    decide, UbatchConfig, V2Record, DP_CUDAGRAPH_FULL, DP_CUDAGRAPH_PIECEWISE,
    DP_PAD_POLICY_WHEN_CUDAGRAPH,
};

const SENTINEL: i32 = -777;

fn message<T: std::fmt::Debug>(r: Result<T>) -> (ErrorKind, String) {
    let e = r.unwrap_err();
    (e.kind, e.message)
}

#[test]
fn local_v1_is_v1_over_copies_of_the_own_record() {
    let mut checked = 0;
    for unpadded in [0, 1, 31, 32, 33, 63, 64, 511, 512, 900] {
        for extra in [0, 1, 7, 64] {
            for (allow_ub, ud, dp_pad, mode, policy, n) in [
                (true, 1, true, 2, DP_PAD_POLICY_EXPLICIT, 2),
                (true, 0, false, 0, DP_PAD_POLICY_EXPLICIT, 3),
                (false, 1, false, 1, DP_PAD_POLICY_WHEN_CUDAGRAPH, 2),
                (true, 1, true, 0, DP_PAD_POLICY_WHEN_CUDAGRAPH, 4),
            ] {
                let req = Request {
                    num_tokens_unpadded: unpadded,
                    num_tokens_padded: unpadded + extra,
                    allow_microbatching: allow_ub,
                    allow_dp_padding: dp_pad,
                    uniform_decode: ud,
                    cudagraph_mode: mode,
                    pad_policy: policy,
                    ubatch: UbatchConfig {
                        enabled: true,
                        num_ubatches: n,
                        ..UbatchConfig::default()
                    },
                    ..Request::default()
                };
                for dp in [1, 2, 5] {
                    let rec = make_record(&req).unwrap();
                    let copies = vec![rec; dp];
                    let mut want_out = vec![SENTINEL; dp];
                    let want = decide(&copies, 0, policy, n, Some(&mut want_out)).unwrap();
                    let mut out = vec![SENTINEL; dp];
                    let got = decide_local_v1(&req, dp as i32, 0, Some(&mut out)).unwrap();
                    assert_eq!(got, want, "{req:?} dp {dp}");
                    assert_eq!(out, want_out);
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 10 * 4 * 4 * 3);
    let v2 = Request {
        rules: DP_RULES_VLLM_V2,
        ..Request::default()
    };
    assert!(message(decide_local_v1(&v2, 2, 0, None))
        .1
        .contains("rules = 1"));
    assert!(message(decide_local_v1(&Request::default(), 2, 2, None))
        .1
        .contains("dp_rank = 2"));
}

fn pw(t: i32) -> Graph {
    Graph {
        mode: DP_CUDAGRAPH_PIECEWISE,
        num_tokens: t,
        num_reqs: -1,
        uniform_token_count: 0,
        max_query_len: -1,
        num_ubatches: 1,
        num_active_loras: 0,
    }
}

fn decode(n: i32, q: i32, ub: i32) -> Graph {
    Graph {
        mode: DP_CUDAGRAPH_FULL,
        num_tokens: n * q,
        num_reqs: n,
        uniform_token_count: q,
        num_ubatches: ub,
        ..pw(1)
    }
}

fn table() -> GraphTable {
    let mut g = vec![pw(8), pw(16), pw(64)];
    for n in [1, 2, 4, 8, 16] {
        g.push(decode(n, 2, 1));
        if n >= 8 {
            g.push(decode(n, 2, 2));
        }
    }
    GraphTable::new(&g, 2).unwrap()
}

fn v2req(t: i32, r: i32, u: i32) -> Request {
    Request {
        rules: DP_RULES_VLLM_V2,
        num_tokens_unpadded: t,
        num_reqs: r,
        uniform_token_count: u,
        max_query_len: if u > 0 { u } else { -1 },
        allow_microbatching: true,
        ubatch: UbatchConfig {
            enabled: true,
            num_ubatches: 2,
            decode_token_threshold: 4,
            prefill_token_threshold: 20,
        },
        ..Request::default()
    }
}

#[test]
fn local_v2_is_v2_over_copies_of_the_own_record() {
    let t = table();
    for (tokens, reqs, u) in [
        (0, 0, 0),
        (2, 1, 2),
        (6, 3, 2),
        (20, 10, 2),
        (30, 15, 2),
        (40, 7, 0),
        (70, 9, 0),
    ] {
        for eager in [false, true] {
            for with_table in [false, true] {
                let req = Request {
                    need_eager: eager,
                    cudagraph_mode: 2,
                    ..v2req(tokens, reqs, u)
                };
                let tab = with_table.then_some(&t);
                for dp in [1, 3] {
                    let rec = make_v2_record(&req, tab).unwrap();
                    let cfg = V2Config::of(&req, tab);
                    let mut want_out = vec![SENTINEL; dp];
                    let want = decide_v2(
                        &vec![rec; dp],
                        1 % dp as i32,
                        None,
                        &cfg,
                        tab,
                        Some(&mut want_out),
                    )
                    .unwrap();
                    let mut out = vec![SENTINEL; dp];
                    let got = decide_local_v2(&req, dp as i32, 1 % dp as i32, tab, Some(&mut out))
                        .unwrap();
                    assert_eq!(got, want, "{req:?} dp {dp}");
                    assert_eq!(out, want_out);
                }
            }
        }
    }
}

/// [`v2req`] without microbatching (the reuse tests want the padded and eager branches).
fn plain(t: i32, r: i32, u: i32) -> Request {
    Request {
        allow_microbatching: false,
        ..v2req(t, r, u)
    }
}

/// A 2-rank prior decided from these records on rank 0.
fn prior_of(recs: &[V2Record], tab: Option<&GraphTable>, req: &Request) -> (Agreement, Vec<i32>) {
    let mut out = vec![SENTINEL; recs.len()];
    let a = decide_v2(recs, 0, None, &V2Config::of(req, tab), tab, Some(&mut out)).unwrap();
    (a, out)
}

fn prior<'a>(a: Agreement, array: &'a [i32], step_id: i64) -> Prior<'a> {
    Prior {
        dp_size: array.len() as i32,
        dp_rank: 0,
        step_id,
        agreement: a,
        array: Some(array),
    }
}

#[test]
fn reuse_checks_vllms_preconditions_and_the_parent_step() {
    let t = table();
    let r0 = plain(6, 3, 2);
    let recs = [
        make_v2_record(&r0, Some(&t)).unwrap(),
        make_v2_record(&plain(12, 6, 2), Some(&t)).unwrap(),
    ];
    let (a, array) = prior_of(&recs, Some(&t), &r0);
    assert_eq!(array, [16, 16], "decode 8 x 2");
    let p = prior(a, &array, 9);
    let draft = |tokens, u| Request {
        parent_step_id: 9,
        ..plain(tokens, 3, u)
    };
    let mut out = [SENTINEL; 2];
    let got = reuse_agreement(&p, &draft(16, 2), Some(&t), Some(&mut out)).unwrap();
    assert_eq!(got.graph, Descriptor::of(&decode(8, 2, 1)));
    assert_eq!(out, [16, 16]);
    assert!(got.padded && !got.eager);
    // The prior's entry for this rank must be the draft's tokens.
    let mut out = [SENTINEL; 2];
    let (k, m) = message(reuse_agreement(&p, &draft(6, 2), Some(&t), Some(&mut out)));
    assert_eq!(k, ErrorKind::InvalidArgument);
    assert!(
        m.contains("num_tokens_unpadded = 6 must equal prior.array[0] = 16"),
        "{m}"
    );
    assert_eq!(out, [SENTINEL; 2]);
    // The prior's uniform count must be none or the draft's.
    let other_u = Request {
        max_query_len: 4,
        ..draft(16, 4)
    };
    let (_, m) = message(reuse_agreement(&p, &other_u, Some(&t), None));
    assert!(
        m.contains("uniform_token_count = 4 must equal the prior's agreed uniform count 2"),
        "{m}"
    );
    // Parent step ids: both set and different is an error; either unset is not checked.
    let (k, m) = message(reuse_agreement(
        &p,
        &Request {
            parent_step_id: 8,
            ..draft(16, 2)
        },
        Some(&t),
        None,
    ));
    assert_eq!(k, ErrorKind::InconsistentRanks);
    assert!(
        m.contains("parent_step_id = 8") && m.contains("step_id = 9"),
        "{m}"
    );
    assert!(reuse_agreement(
        &p,
        &Request {
            parent_step_id: 0,
            ..draft(16, 2)
        },
        Some(&t),
        None
    )
    .is_ok());
    assert!(reuse_agreement(&prior(a, &array, 0), &draft(16, 2), Some(&t), None).is_ok());
    // The draft request is validated.
    let (_, m) = message(reuse_agreement(&p, &draft(16, -1), Some(&t), None));
    assert!(m.contains("uniform_token_count = -1"), "{m}");
    let short = [16];
    let bad = Prior {
        array: Some(&short),
        ..p
    };
    assert!(
        message(reuse_agreement(&bad, &draft(16, 2), Some(&t), None))
            .1
            .contains("prior.array holds 1")
    );
    let none = Prior { array: None, ..p };
    assert!(
        message(reuse_agreement(&none, &draft(16, 2), Some(&t), None))
            .1
            .contains("prior.array is missing")
    );
}

#[test]
fn reuse_repads_when_this_table_pads_further_and_keeps_an_eager_prior() {
    let t = table();
    // A prior over a table-less agreement: padded to 12 (T*).
    let r0 = Request {
        cudagraph_mode: 1,
        ..plain(6, 3, 2)
    };
    let r1 = Request {
        cudagraph_mode: 1,
        ..plain(12, 6, 2)
    };
    let recs = [
        make_v2_record(&r0, None).unwrap(),
        make_v2_record(&r1, None).unwrap(),
    ];
    let (a, array) = prior_of(&recs, None, &r0);
    assert_eq!(array, [12, 12]);
    let mut out = [SENTINEL; 2];
    let got = reuse_agreement(
        &prior(a, &array, 0),
        &plain(12, 3, 2),
        Some(&t),
        Some(&mut out),
    )
    .unwrap();
    assert_eq!(
        got.graph,
        Descriptor::of(&decode(8, 2, 1)),
        "k = 6 -> 8 requests"
    );
    assert_eq!(out, [16, 16], "this table pads further");
    assert_eq!(
        (got.num_tokens_self, got.max_num_tokens, got.min_num_tokens),
        (16, 12, 12)
    );
    // An eager prior (one rank need_eager): NONE with the draft's own shape, array unchanged.
    let e0 = Request {
        need_eager: true,
        ..plain(6, 3, 2)
    };
    let recs = [
        make_v2_record(&e0, Some(&t)).unwrap(),
        make_v2_record(&plain(12, 6, 2), Some(&t)).unwrap(),
    ];
    let (a, array) = prior_of(&recs, Some(&t), &e0);
    assert_eq!(array, [6, 12]);
    let mut out = [SENTINEL; 2];
    let got = reuse_agreement(
        &prior(a, &array, 0),
        &Request {
            num_active_loras: 3,
            ..plain(6, 3, 2)
        },
        Some(&t),
        Some(&mut out),
    )
    .unwrap();
    assert_eq!(got.graph, Descriptor::none(6, 3, 3, 1));
    assert_eq!(out, [6, 12]);
    assert!(got.eager && !got.padded);
    assert_eq!((got.max_num_tokens, got.min_num_tokens), (12, 6));
    // A draft that needs eager under a non-eager prior: NONE, the prior kept, not eager.
    let (a, array) = prior_of(
        &[
            make_v2_record(&plain(6, 3, 2), Some(&t)).unwrap(),
            make_v2_record(&plain(12, 6, 2), Some(&t)).unwrap(),
        ],
        Some(&t),
        &plain(6, 3, 2),
    );
    let got = reuse_agreement(
        &prior(a, &array, 0),
        &Request {
            need_eager: true,
            ..plain(16, 3, 2)
        },
        Some(&t),
        None,
    )
    .unwrap();
    assert_eq!(got.graph, Descriptor::none(16, 3, 0, 1));
    assert!(!got.eager && got.padded);
}

#[test]
fn uniform_draft_is_max_reqs_times_q_and_never_eager() {
    let t = table();
    let e0 = Request {
        need_eager: true,
        ..plain(6, 3, 2)
    };
    let recs = [
        make_v2_record(&e0, Some(&t)).unwrap(),
        make_v2_record(&plain(10, 5, 2), Some(&t)).unwrap(),
    ];
    let (a, array) = prior_of(&recs, Some(&t), &e0);
    assert!(a.eager);
    let p = prior(a, &array, 0);
    let mut out = [SENTINEL; 2];
    let got = uniform_draft_agreement(&p, 3, 2, Some(&t), Some(&mut out)).unwrap();
    // T = 5 x 2 = 10, k = 5 -> the decode graph of 8 requests (16 tokens).
    assert_eq!(got.graph, Descriptor::of(&decode(8, 2, 1)));
    assert_eq!(out, [16, 16]);
    assert!(!got.eager && got.padded);
    assert_eq!(
        (got.uniform_token_count, got.max_query_len, got.max_num_reqs),
        (2, 2, 5)
    );
    assert_eq!((got.max_num_tokens, got.num_tokens_self), (10, 16));
    // Without a table: NONE with T tokens, not eager.
    let got = uniform_draft_agreement(&p, 3, 2, None, Some(&mut out)).unwrap();
    assert_eq!(got.graph, Descriptor::none(10, 3, 0, 1));
    assert_eq!(out, [10, 10]);
    assert!(!got.eager);
    // vLLM's assert: R' x q <= T.
    let mut out = [SENTINEL; 2];
    let (_, m) = message(uniform_draft_agreement(&p, 6, 2, Some(&t), Some(&mut out)));
    assert!(
        m.contains("6 x 2 = 12 must be <= prior max_num_reqs x query_len = 10"),
        "{m}"
    );
    assert_eq!(out, [SENTINEL; 2]);
    assert!(message(uniform_draft_agreement(&p, 1, 0, Some(&t), None))
        .1
        .contains("query_len = 0"));
    assert!(message(uniform_draft_agreement(&p, -1, 1, Some(&t), None))
        .1
        .contains("num_reqs = -1"));
    let big = Prior {
        agreement: Agreement {
            max_num_reqs: i32::MAX,
            ..a
        },
        ..p
    };
    assert!(message(uniform_draft_agreement(&big, 1, 2, Some(&t), None))
        .1
        .contains("overflows"));
}

#[test]
fn idle_priors_are_refused_and_dp_size_one_priors_decide_on_the_own_inputs() {
    let t = table();
    let recs = [make_v2_record(&plain(0, 0, 0), Some(&t)).unwrap(); 2];
    let (a, _) = prior_of(&recs, Some(&t), &plain(0, 0, 0));
    assert!(a.idle && !a.has_array);
    let p = Prior {
        dp_size: 2,
        dp_rank: 0,
        step_id: 0,
        agreement: a,
        array: None,
    };
    let (k, m) = message(reuse_agreement(&p, &plain(0, 0, 0), Some(&t), None));
    assert_eq!(k, ErrorKind::InvalidArgument);
    assert!(m.contains("prior.agreement.idle"), "{m}");
    assert!(message(uniform_draft_agreement(&p, 1, 1, Some(&t), None))
        .1
        .contains("idle"));
    // dp_size 1: no state, so the draft's own dispatch, no array, out untouched.
    let one = decide_v2(
        &[make_v2_record(&plain(6, 3, 2), Some(&t)).unwrap()],
        0,
        None,
        &V2Config::of(&plain(6, 3, 2), Some(&t)),
        Some(&t),
        None,
    )
    .unwrap();
    let p = Prior {
        dp_size: 1,
        dp_rank: 0,
        step_id: 4,
        agreement: one,
        array: None,
    };
    let mut out = [SENTINEL];
    let draft = Request {
        max_query_len: -1,
        ..plain(8, 4, 2)
    };
    let got = reuse_agreement(&p, &draft, Some(&t), Some(&mut out)).unwrap();
    assert_eq!(
        got.graph,
        Descriptor::of(&decode(4, 2, 1)),
        "the draft's own u; the prior's 8 tokens do not matter"
    );
    assert!(!got.has_array && !got.padded);
    assert_eq!((got.max_query_len, got.max_num_reqs), (-1, 4));
    assert_eq!(out, [SENTINEL]);
    let got = uniform_draft_agreement(&p, 3, 2, Some(&t), Some(&mut out)).unwrap();
    assert_eq!(
        got.graph,
        Descriptor::of(&decode(4, 2, 1)),
        "T = 3 x 2 of its own"
    );
    assert_eq!(
        (
            got.num_tokens_self,
            got.uniform_token_count,
            got.max_query_len
        ),
        (6, 2, -1)
    );
    assert_eq!(out, [SENTINEL]);
    let (k, _) = message(reuse_agreement(
        &p,
        &Request {
            parent_step_id: 3,
            ..draft
        },
        Some(&t),
        None,
    ));
    assert_eq!(
        k,
        ErrorKind::InconsistentRanks,
        "the step check holds at dp_size 1 too"
    );
}
