//! The device form read back by the layout its module documents: a dispatch over the words
//! (LoRA case, directory, entry by `x` or by binary search, rest records, PIECEWISE size)
//! equals `GraphTable::dispatch` on every query near every key, for tables with LoRA cases,
//! twins, varlen graphs, several FULL graphs of one size, keys across the dense bound, and a
//! table whose dense budget runs out.

use super::super::{Descriptor, Graph, GraphTable, DENSE_KEYS};
use super::*;
use crate::rules::{DP_CUDAGRAPH_FULL as FULL, DP_CUDAGRAPH_PIECEWISE as PW};

fn g(mode: i32, t: i32, r: i32, u: i32, q: i32, n: i32, l: i32) -> Graph {
    Graph {
        mode,
        num_tokens: t,
        num_reqs: r,
        uniform_token_count: u,
        max_query_len: q,
        num_ubatches: n,
        num_active_loras: l,
    }
}

/// The dispatch as the documented words give it.
fn dispatch_words(w: &[u32], r: i32, t: i32, u: i32, loras: i32, mql: i32, n: i32) -> Descriptor {
    let at = |i: usize| w[i] as i32;
    let u = u.max(0);
    let mql = if mql < 0 { -1 } else { mql };
    let cases: Vec<i32> = (0..at(LORA_COUNT) as usize)
        .map(|i| at(at(LORA_AT) as usize + i))
        .collect();
    let l = match cases.iter().find(|&&c| c >= loras) {
        _ if loras <= 0 || cases.is_empty() => loras,
        Some(&c) => c,
        None => *cases.last().unwrap(),
    };
    let none = Descriptor::none(t, r, l, n);
    if t <= 0 || at(NUM_GRAPHS) == 0 {
        return none;
    }
    let find = |count: usize, first: usize, key: [i32; 3]| {
        (0..at(count) as usize)
            .map(|i| at(first) as usize + DIR_WORDS * i)
            .find(|&d| [at(d), at(d + 1), at(d + 2)] == key)
    };
    let entry = |dir: usize, x: i32| -> Option<usize> {
        if x > at(dir + DIR_MAX_KEY) {
            return None;
        }
        let dense = at(dir + DIR_DENSE_LEN);
        let index = if x < dense {
            x
        } else {
            let keys_at = at(dir + DIR_KEYS_AT) as usize;
            let keys: Vec<i32> = (0..at(dir + DIR_NUM_KEYS) as usize)
                .map(|i| at(keys_at + i))
                .collect();
            dense + keys.partition_point(|&k| k < x) as i32
        };
        Some(at(dir + DIR_ENTRIES_AT) as usize + ENTRY_WORDS * index as usize)
    };
    let fits = |c: usize| {
        let (gt, gr, gu, gq) = (at(c), at(c + 1), at(c + 2), at(c + 3));
        gt > 0
            && (gu == 0 || gu == u)
            && (gq == -1 || (mql != -1 && gq >= mql))
            && (gr == -1 || gr >= r)
            && gt >= t
    };
    let full = |c: usize, dir: usize| Descriptor {
        mode: FULL,
        num_tokens: at(c),
        num_reqs: at(c + 1),
        uniform_token_count: at(c + 2),
        max_query_len: at(c + 3),
        num_ubatches: at(dir + DIR_UBATCHES),
        num_active_loras: at(dir + DIR_LORAS),
    };
    if u > 0 {
        if let Some(dir) = find(DECODE_COUNT, DECODE_AT, [u, l, n]) {
            let k = ((i64::from(t) + i64::from(u) - 1) / i64::from(u)) as i32;
            if let Some(e) = entry(dir, k).filter(|&e| fits(e)) {
                assert_eq!(at(e + E_REST_COUNT), 0, "a decode entry has no rest");
                return full(e, dir);
            }
        }
    }
    let Some(dir) = find(TOKEN_COUNT, TOKEN_AT, [0, l, n]) else {
        return none;
    };
    let Some(e) = entry(dir, t) else {
        return none;
    };
    let rest_at = at(e + E_REST_AT) as usize;
    let candidates = std::iter::once(e)
        .chain((0..at(e + E_REST_COUNT) as usize).map(|i| rest_at + REST_WORDS * i));
    for c in candidates {
        if fits(c) {
            return full(c, dir);
        }
    }
    match at(e + E_PIECEWISE) {
        0 => none,
        p => Descriptor {
            mode: PW,
            num_tokens: p,
            num_reqs: -1,
            uniform_token_count: 0,
            max_query_len: -1,
            num_ubatches: 1,
            num_active_loras: l,
        },
    }
}

/// Every query near every graph's tokens, requests and their quotients: the words dispatch as
/// the table does.
fn assert_words_dispatch_as_the_table(graphs: &[Graph]) {
    let table = GraphTable::new(graphs, 1).unwrap();
    let w = table.device_words();
    assert_eq!(w[HASH], table.hash());
    assert_eq!(w[NUM_GRAPHS] as usize, graphs.len());
    let mut ts = vec![-1, 0, 1, 2, 3];
    let mut loras = vec![-1, 0, 1, 2, 3, 5, 9];
    for x in graphs {
        for v in [x.num_tokens, x.num_reqs] {
            ts.extend([v - 1, v, v + 1, v / 2, v / 2 + 1]);
        }
        loras.extend([x.num_active_loras, x.num_active_loras + 1]);
    }
    ts.retain(|&t| t >= -1);
    ts.sort_unstable();
    ts.dedup();
    loras.sort_unstable();
    loras.dedup();
    let mut checked = 0;
    for &t in &ts {
        for r in [1, 2, t.max(1), t / 2 + 1, 64] {
            for u in [0, 1, 2, 4] {
                for &l in &loras {
                    for q in [-1, 1, 2, 4, 8] {
                        for n in [1, 2, 3] {
                            assert_eq!(
                                dispatch_words(&w, r, t, u, l, q, n),
                                table.dispatch(r, t, u, l, q, n),
                                "query r {r} t {t} u {u} loras {l} mql {q} n {n}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 1000);
}

#[test]
fn the_words_dispatch_as_the_table_on_vllm_shapes() {
    let mut graphs = Vec::new();
    for l in [0, 2, 8] {
        // Decode graphs (q 1 and 4) and their twins, PIECEWISE and FULL token graphs, varlen
        // graphs and their twins, two FULL graphs of one size.
        for reqs in [1, 2, 4, 8, 16, 24, 32] {
            graphs.push(g(FULL, reqs, reqs, 1, -1, 1, l));
            graphs.push(g(FULL, 4 * reqs, reqs, 4, -1, 1, l));
            if reqs >= 8 {
                graphs.push(g(FULL, reqs, reqs, 1, -1, 2, l));
            }
        }
        for t in [1, 2, 4, 8, 16, 32, 48, 64, 128] {
            graphs.push(g(PW, t, -1, 0, -1, 1, l));
        }
        for t in [8, 40, 60, 64] {
            let r = (t / 2).min(20);
            graphs.push(g(FULL, t, r, 0, -1, 1, l));
            graphs.push(g(FULL, t, r, 0, 4, 1, l));
            if t % r == 0 && t >= 16 {
                graphs.push(g(FULL, t, r, t / r, -1, 2, l));
                graphs.push(g(FULL, t, r, t / r, 4, 2, l));
            }
        }
        graphs.push(g(FULL, 64, 16, 0, -1, 1, l));
    }
    assert_words_dispatch_as_the_table(&graphs);
    assert_words_dispatch_as_the_table(&[]);
    assert_words_dispatch_as_the_table(&[g(PW, 5, -1, 0, -1, 1, 0)]);
}

#[test]
fn the_words_dispatch_as_the_table_across_the_dense_bound() {
    let big = DENSE_KEYS as i32;
    let graphs = [
        g(PW, big - 384, -1, 0, -1, 1, 0),
        g(PW, big, -1, 0, -1, 1, 0),
        g(PW, big + 3616, -1, 0, -1, 1, 0),
        g(FULL, big + 8, big + 8, 0, -1, 1, 0),
        g(FULL, big - 1, big - 1, 1, -1, 1, 0),
        g(FULL, big + 1, big + 1, 1, -1, 1, 0),
    ];
    let w = GraphTable::new(&graphs, 1).unwrap().device_words();
    let dir = w[TOKEN_AT] as usize;
    assert_eq!(w[dir + DIR_DENSE_LEN] as usize, DENSE_KEYS, "capped");
    assert_words_dispatch_as_the_table(&graphs);
}

#[test]
fn past_the_dense_budget_blocks_are_searched_and_still_dispatch_alike() {
    // Each LoRA case's block would take DENSE_KEYS dense entries; the budget holds a few.
    let cases = DENSE_BUDGET / (ENTRY_WORDS * DENSE_KEYS) + 3;
    let graphs: Vec<Graph> = (1..=cases as i32)
        .flat_map(|l| {
            [
                g(PW, DENSE_KEYS as i32 + l, -1, 0, -1, 1, l),
                g(PW, 7 * l, -1, 0, -1, 1, l),
            ]
        })
        .collect();
    let w = GraphTable::new(&graphs, 1).unwrap().device_words();
    let dense: Vec<u32> = (0..w[TOKEN_COUNT] as usize)
        .map(|i| w[w[TOKEN_AT] as usize + DIR_WORDS * i + DIR_DENSE_LEN])
        .collect();
    assert_eq!(
        dense.iter().filter(|&&d| d as usize == DENSE_KEYS).count(),
        cases - 3
    );
    assert_eq!(dense.iter().filter(|&&d| d == 0).count(), 3);
    assert!(w.len() < DENSE_BUDGET + 4096);
    assert_words_dispatch_as_the_table(&graphs);
}
