//! Unit tests of `rules::graphs`: every refusal of `GraphTable::new` (index, field, value
//! named), the dispatch's candidate order and compatibility rules, LoRA resolution, the hash.

use super::*;
use crate::error::ErrorKind;

const PW: i32 = DP_CUDAGRAPH_PIECEWISE;
const FULL: i32 = DP_CUDAGRAPH_FULL;

fn pw(t: i32) -> Graph {
    Graph {
        mode: PW,
        num_tokens: t,
        num_reqs: -1,
        uniform_token_count: 0,
        max_query_len: -1,
        num_ubatches: 1,
        num_active_loras: 0,
    }
}

fn full(t: i32, r: i32) -> Graph {
    Graph {
        mode: FULL,
        num_reqs: r,
        ..pw(t)
    }
}

fn decode(n: i32, q: i32) -> Graph {
    Graph {
        uniform_token_count: q,
        ..full(n * q, n)
    }
}

fn twin(g: Graph, n: i32) -> Graph {
    Graph {
        num_ubatches: n,
        uniform_token_count: g.num_tokens / g.num_reqs,
        ..g
    }
}

fn lora(g: Graph, l: i32) -> Graph {
    Graph {
        num_active_loras: l,
        ..g
    }
}

fn refused(graphs: &[Graph], dql: i32) -> String {
    let e = GraphTable::new(graphs, dql).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    e.message
}

fn assert_names(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "{msg:?} lacks {n:?}");
    }
}

#[test]
fn refuses_each_field_out_of_range_naming_index_field_and_value() {
    let ok = pw(8);
    let cases: Vec<(Graph, &str)> = vec![
        (Graph { mode: 0, ..ok }, "graphs[1].mode = 0"),
        (Graph { mode: 3, ..ok }, "graphs[1].mode = 3"),
        (
            Graph {
                num_tokens: 0,
                ..ok
            },
            "graphs[1].num_tokens = 0",
        ),
        (
            Graph {
                num_ubatches: 0,
                ..ok
            },
            "graphs[1].num_ubatches = 0",
        ),
        (
            Graph {
                num_active_loras: -1,
                ..ok
            },
            "graphs[1].num_active_loras = -1",
        ),
        (
            Graph {
                num_reqs: 0,
                ..full(8, 8)
            },
            "graphs[1].num_reqs = 0",
        ),
        (Graph { num_reqs: -2, ..ok }, "graphs[1].num_reqs = -2"),
        (
            Graph {
                uniform_token_count: -1,
                ..full(8, 8)
            },
            "graphs[1].uniform_token_count = -1",
        ),
        (
            Graph {
                max_query_len: 0,
                ..full(8, 8)
            },
            "graphs[1].max_query_len = 0",
        ),
        // PIECEWISE graphs pad nothing and are never microbatched.
        (Graph { num_reqs: 4, ..ok }, "graphs[1].num_reqs = 4"),
        (
            Graph {
                uniform_token_count: 1,
                ..ok
            },
            "graphs[1].uniform_token_count = 1",
        ),
        (
            Graph {
                max_query_len: 4,
                ..ok
            },
            "graphs[1].max_query_len = 4",
        ),
        (
            Graph {
                num_ubatches: 2,
                ..ok
            },
            "graphs[1].num_ubatches = 2",
        ),
        // FULL graphs pad requests, never more than their tokens.
        (full(8, -1), "graphs[1].num_reqs = -1"),
        (
            full(8, 9),
            "graphs[1].num_reqs = 9 must be <= num_tokens = 8",
        ),
        // Uniform graphs are whole requests, and decode graphs carry no bound.
        (
            Graph {
                num_tokens: 9,
                ..decode(4, 2)
            },
            "graphs[1].num_tokens = 9",
        ),
        (
            Graph {
                max_query_len: 2,
                ..decode(4, 2)
            },
            "graphs[1].max_query_len = 2",
        ),
        // Twins carry a uniform count and at least one token per microbatch.
        (
            Graph {
                num_ubatches: 2,
                ..full(8, 8)
            },
            "graphs[1].uniform_token_count = 0",
        ),
        (
            twin(decode(1, 1), 2),
            "graphs[1].num_tokens = 1 must be >= num_ubatches = 2",
        ),
    ];
    for (bad, needle) in cases {
        let msg = refused(&[pw(4), bad], 1);
        assert_names(&msg, &[needle]);
    }
}

#[test]
fn refuses_duplicates_orphan_and_ambiguous_twins_and_mixed_twin_counts() {
    let msg = refused(&[pw(8), pw(16), pw(8)], 1);
    assert_names(&msg, &["graphs[2] duplicates graphs[0]"]);
    // A twin needs its original.
    let msg = refused(&[decode(32, 1), twin(decode(40, 1), 2)], 1);
    assert_names(&msg, &["graphs[1]", "no original", "num_tokens 40"]);
    // An original with another query bound or LoRA case is not its original.
    let varlen = Graph {
        max_query_len: 4,
        ..full(40, 40)
    };
    let msg = refused(&[varlen, twin(full(40, 40), 2)], 1);
    assert_names(&msg, &["graphs[1]", "no original"]);
    let msg = refused(&[full(40, 40), lora(twin(full(40, 40), 2), 1)], 1);
    assert_names(&msg, &["graphs[1]", "no original"]);
    // A decode original and a token-keyed original at once.
    let msg = refused(&[decode(40, 1), full(40, 40), twin(full(40, 40), 2)], 1);
    assert_names(
        &msg,
        &["graphs[2]", "two originals", "graphs[0]", "graphs[1]"],
    );
    // One num_ubatches for every twin.
    let msg = refused(
        &[
            decode(32, 1),
            twin(decode(32, 1), 2),
            decode(48, 1),
            twin(decode(48, 1), 3),
        ],
        1,
    );
    assert_names(
        &msg,
        &["graphs[3].num_ubatches = 3", "graphs[1].num_ubatches = 2"],
    );
}

#[test]
fn refuses_decode_query_len_and_too_many_graphs() {
    assert_names(&refused(&[pw(8)], 0), &["decode_query_len = 0"]);
    let many: Vec<Graph> = (1..=DP_MAX_GRAPHS as i32 + 1).map(pw).collect();
    assert_names(&refused(&many, 1), &["num_graphs = 65537", "65536"]);
    let most: Vec<Graph> = (1..=DP_MAX_GRAPHS as i32).map(pw).collect();
    assert!(GraphTable::new(&most, 1).is_ok());
}

#[test]
fn accepts_vllm_shapes_and_keeps_the_graphs_as_given() {
    let graphs = [
        decode(1, 1),
        decode(8, 1),
        decode(32, 1),
        twin(decode(32, 1), 2),
        full(64, 32),
        twin(full(64, 32), 2),
        Graph {
            max_query_len: 4,
            ..full(16, 16)
        },
        pw(8),
        pw(64),
    ];
    let t = GraphTable::new(&graphs, 1).unwrap();
    assert_eq!(t.graphs(), &graphs);
    assert_eq!(t.decode_query_len(), 1);
    let empty = GraphTable::new(&[], 4).unwrap();
    assert!(empty.graphs().is_empty());
    assert_eq!(
        empty.dispatch(3, 10, 1, 5, 2, 1),
        Descriptor::none(10, 3, 5, 1)
    );
}

#[test]
fn dispatch_takes_the_decode_entry_first_then_full_then_piecewise() {
    // FULL mixed graphs at 16 and 64, PIECEWISE at 8, 16, 128, decode graphs of 1, 4, 32.
    let graphs = [
        pw(8),
        pw(16),
        pw(128),
        full(16, 16),
        full(64, 32),
        decode(1, 1),
        decode(4, 1),
        decode(32, 1),
    ];
    let t = GraphTable::new(&graphs, 1).unwrap();
    let d = |r, n, u, mql| t.dispatch(r, n, u, 0, mql, 1);
    // k = 3 -> the decode graph of 4 requests, before the FULL 16.
    assert_eq!(d(3, 3, 1, -1), Descriptor::of(&decode(4, 1)));
    // Decode graphs pad above the largest token-keyed FULL size (k = 20 -> 32).
    assert_eq!(d(20, 20, 1, -1), Descriptor::of(&decode(32, 1)));
    // Above the decode table: token-keyed; FULL 64 holds 32 requests at most.
    assert_eq!(d(40, 40, 1, -1), Descriptor::of(&pw(128)));
    assert_eq!(d(30, 40, 0, -1), Descriptor::of(&full(64, 32)));
    // No uniform count: FULL of the smallest FULL size >= T, else PIECEWISE.
    assert_eq!(d(3, 3, 0, -1), Descriptor::of(&full(16, 16)));
    assert_eq!(d(17, 17, 0, -1), Descriptor::of(&full(64, 32)));
    // 20 requests do not fit FULL 16; FULL 64 would, but only the smallest FULL size is tried.
    assert_eq!(d(20, 10, 0, -1), Descriptor::of(&pw(16)));
    assert_eq!(
        d(1, 5, 2, -1),
        Descriptor::of(&full(16, 16)),
        "u 2 has no decode table"
    );
    assert_eq!(d(1, 200, 0, -1), Descriptor::none(200, 1, 0, 1));
    assert_eq!(d(0, 0, 1, -1), Descriptor::none(0, 0, 0, 1));
    assert_eq!(d(2, -3, 1, -1), Descriptor::none(-3, 2, 0, 1));
    // A microbatched dispatch matches only twins.
    assert_eq!(t.dispatch(3, 3, 1, 0, -1, 2), Descriptor::none(3, 3, 0, 2));
}

#[test]
fn dispatch_compatibility_uniform_bound_requests_loras_ubatches() {
    let varlen = Graph {
        max_query_len: 4,
        ..full(16, 16)
    };
    let t = GraphTable::new(&[varlen, pw(16), decode(16, 1), twin(decode(16, 1), 2)], 4).unwrap();
    // A bound graph needs a bound no larger than its own.
    assert_eq!(t.dispatch(4, 10, 0, 0, 4, 1), Descriptor::of(&varlen));
    assert_eq!(t.dispatch(4, 10, 0, 0, 5, 1), Descriptor::of(&pw(16)));
    assert_eq!(t.dispatch(4, 10, 0, 0, -1, 1), Descriptor::of(&pw(16)));
    // The decode entry needs room for the rank's own requests.
    assert_eq!(
        t.dispatch(16, 16, 1, 0, -1, 1),
        Descriptor::of(&decode(16, 1))
    );
    // k = 16 with 17 requests: neither the decode graph nor the varlen one (16 requests).
    assert_eq!(t.dispatch(17, 16, 1, 0, 1, 1), Descriptor::of(&pw(16)));
    assert_eq!(
        t.dispatch(17, 16, 1, 0, 1, 2),
        Descriptor::none(16, 17, 0, 2)
    );
    assert_eq!(
        t.dispatch(9, 12, 1, 0, -1, 2),
        Descriptor::of(&twin(decode(16, 1), 2))
    );
}

#[test]
fn loras_resolve_to_the_smallest_captured_case_and_clamp() {
    let mut graphs = Vec::new();
    for l in [0, 1, 2, 4, 9] {
        graphs.push(lora(pw(8), l));
        graphs.push(lora(decode(8, 1), l));
    }
    let t = GraphTable::new(&graphs, 1).unwrap();
    for (given, case) in [
        (0, 0),
        (1, 1),
        (2, 2),
        (3, 4),
        (4, 4),
        (5, 9),
        (9, 9),
        (10, 9),
        (-1, -1),
    ] {
        assert_eq!(t.effective_loras(given), case, "{given}");
    }
    assert_eq!(
        t.dispatch(2, 4, 0, 3, -1, 1),
        Descriptor::of(&lora(pw(8), 4))
    );
    assert_eq!(
        t.dispatch(2, 4, 1, 7, -1, 1),
        Descriptor::of(&lora(decode(8, 1), 9))
    );
    assert_eq!(
        t.dispatch(2, 40, 0, 3, -1, 1),
        Descriptor::none(40, 2, 4, 1)
    );
    // Without LoRA cases, a count passes unchanged (and matches no graph).
    let plain = GraphTable::new(&[pw(8)], 1).unwrap();
    assert_eq!(
        plain.dispatch(1, 4, 0, 3, -1, 1),
        Descriptor::none(4, 1, 3, 1)
    );
}

#[test]
fn ties_keep_the_table_order() {
    // Two FULL graphs of one size that differ in their request count (not vLLM's, but legal):
    // the first in table order that fits wins.
    let a = Graph {
        max_query_len: 2,
        ..full(16, 16)
    };
    let b = full(16, 8);
    let ab = GraphTable::new(&[a, b], 1).unwrap();
    let ba = GraphTable::new(&[b, a], 1).unwrap();
    assert_eq!(ab.dispatch(4, 10, 0, 0, 1, 1), Descriptor::of(&a));
    assert_eq!(ba.dispatch(4, 10, 0, 0, 1, 1), Descriptor::of(&b));
}

#[test]
fn hash_covers_every_graph_in_order_and_the_decode_query_len() {
    let graphs = [pw(8), full(16, 16), decode(4, 1)];
    let h = GraphTable::new(&graphs, 1).unwrap().hash();
    assert_ne!(h, 0);
    assert_eq!(
        GraphTable::new(&graphs, 1).unwrap().hash(),
        h,
        "deterministic"
    );
    assert_ne!(GraphTable::new(&graphs, 2).unwrap().hash(), h);
    let swapped = [graphs[1], graphs[0], graphs[2]];
    assert_ne!(GraphTable::new(&swapped, 1).unwrap().hash(), h);
    assert_ne!(GraphTable::new(&graphs[..2], 1).unwrap().hash(), h);
    let words: [i32; 7] = bytemuck::cast(graphs[2]);
    for w in 0..7 {
        let mut changed = words;
        changed[w] += if w == 4 { 0 } else { 1 };
        if w == 4 {
            continue; // a decode graph's bound must stay -1
        }
        let mut g = graphs;
        g[2] = bytemuck::cast(changed);
        if let Ok(t) = GraphTable::new(&g, 1) {
            assert_ne!(t.hash(), h, "word {w}");
        }
    }
    assert_ne!(GraphTable::new(&[], 1).unwrap().hash(), 0);
}

#[test]
fn lookups_agree_across_the_dense_index_bound() {
    let big = DENSE_KEYS as i32;
    let graphs = [
        pw(big - 384),
        pw(big),
        pw(big + 3616),
        decode(big - 1, 1),
        decode(big + 1, 1),
    ];
    let t = GraphTable::new(&graphs, 1).unwrap();
    for (tokens, want) in [
        (big - 385, big - 384),
        (big - 384, big - 384),
        (big - 1, big),
        (big, big),
        (big + 1, big + 3616),
        (big + 3616, big + 3616),
    ] {
        assert_eq!(
            t.dispatch(1, tokens, 0, 0, -1, 1),
            Descriptor::of(&pw(want)),
            "{tokens}"
        );
    }
    assert_eq!(t.dispatch(1, big + 3617, 0, 0, -1, 1).mode, 0);
    for (k, want) in [
        (big - 2, big - 1),
        (big - 1, big - 1),
        (big, big + 1),
        (big + 1, big + 1),
    ] {
        assert_eq!(
            t.dispatch(1, k, 1, 0, -1, 1),
            Descriptor::of(&decode(want, 1)),
            "{k}"
        );
    }
    assert_eq!(
        t.dispatch(1, big + 2, 1, 0, -1, 1),
        Descriptor::of(&pw(big + 3616))
    );
}
