//! `GraphTable::new`'s checks (the list and the reasons are in the parent module's docs): one
//! graph's fields, then the table's duplicates and twins, which also classify each graph.

use crate::error::{invalid, Result};

use super::super::{DP_CUDAGRAPH_FULL, DP_CUDAGRAPH_PIECEWISE};
use super::Graph;

/// Where a graph belongs (module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// Token-keyed (no uniform count, or a twin beside a token-keyed original).
    TokenKeyed,
    /// In a decode table (a uniform count, or a twin of a decode original).
    Decode,
}

/// The single-graph checks (module docs).
pub(super) fn check_graph(i: usize, g: &Graph) -> Result<()> {
    let bad =
        |field: &str, value: i32, rule: &str| Err(invalid!("graphs[{i}].{field} = {value} {rule}"));
    if g.mode != DP_CUDAGRAPH_PIECEWISE && g.mode != DP_CUDAGRAPH_FULL {
        return bad(
            "mode",
            g.mode,
            "must be 1 (PIECEWISE) or 2 (FULL): a captured graph has a graph mode",
        );
    }
    if g.num_tokens < 1 {
        return bad("num_tokens", g.num_tokens, "must be >= 1");
    }
    if g.num_ubatches < 1 {
        return bad(
            "num_ubatches",
            g.num_ubatches,
            "must be >= 1 (1 = not microbatched)",
        );
    }
    if g.num_active_loras < 0 {
        return bad("num_active_loras", g.num_active_loras, "must be >= 0");
    }
    if g.num_reqs != -1 && g.num_reqs < 1 {
        return bad("num_reqs", g.num_reqs, "must be -1 (none) or >= 1");
    }
    if g.uniform_token_count < 0 {
        return bad(
            "uniform_token_count",
            g.uniform_token_count,
            "must be >= 0 (0 = none)",
        );
    }
    if g.max_query_len != -1 && g.max_query_len < 1 {
        return bad(
            "max_query_len",
            g.max_query_len,
            "must be -1 (none) or >= 1",
        );
    }
    if g.mode == DP_CUDAGRAPH_PIECEWISE {
        let pw = "must be {} for a PIECEWISE graph (vLLM's PIECEWISE graphs pad no requests, \
                  constrain no query, and DBO captures FULL graphs only)";
        for (field, value, none) in [
            ("num_reqs", g.num_reqs, -1),
            ("uniform_token_count", g.uniform_token_count, 0),
            ("max_query_len", g.max_query_len, -1),
            ("num_ubatches", g.num_ubatches, 1),
        ] {
            if value != none {
                return bad(field, value, &pw.replace("{}", &none.to_string()));
            }
        }
        return Ok(());
    }
    if g.num_reqs == -1 {
        return bad(
            "num_reqs",
            -1,
            "must be >= 1 for a FULL graph (vLLM's FULL graphs pad requests)",
        );
    }
    if g.num_reqs > g.num_tokens {
        return Err(invalid!(
            "graphs[{i}].num_reqs = {} must be <= num_tokens = {} (a request has >= 1 token)",
            g.num_reqs,
            g.num_tokens
        ));
    }
    let u = g.uniform_token_count;
    if u != 0 && i64::from(g.num_tokens) != i64::from(g.num_reqs) * i64::from(u) {
        return Err(invalid!(
            "graphs[{i}].num_tokens = {} must be num_reqs x uniform_token_count = {} x {u} \
             (a uniform graph holds whole requests)",
            g.num_tokens,
            g.num_reqs
        ));
    }
    if g.num_ubatches == 1 {
        if u != 0 && g.max_query_len != -1 {
            return bad(
                "max_query_len",
                g.max_query_len,
                "must be -1 for a uniform-decode graph (uniform_token_count set, num_ubatches \
                 1): vLLM's decode graphs carry no query bound",
            );
        }
        return Ok(());
    }
    if u == 0 {
        return bad(
            "uniform_token_count",
            0,
            "must be set for a microbatched twin (num_ubatches > 1): vLLM's twins carry \
             tokens / requests",
        );
    }
    if g.num_tokens < g.num_ubatches {
        return Err(invalid!(
            "graphs[{i}].num_tokens = {} must be >= num_ubatches = {} for a microbatched twin",
            g.num_tokens,
            g.num_ubatches
        ));
    }
    Ok(())
}

/// Duplicates, twins' originals and the one twin `num_ubatches`: each graph's class.
pub(super) fn classify(graphs: &[Graph]) -> Result<Vec<Class>> {
    use std::collections::HashMap;
    let mut seen: HashMap<&Graph, usize> = HashMap::with_capacity(graphs.len());
    for (i, g) in graphs.iter().enumerate() {
        if let Some(first) = seen.insert(g, i) {
            return Err(invalid!(
                "graphs[{i}] duplicates graphs[{first}] ({g:?}): every captured graph is \
                 distinct"
            ));
        }
    }
    let mut twin_n: Option<(usize, i32)> = None;
    let mut classes = Vec::with_capacity(graphs.len());
    for (i, g) in graphs.iter().enumerate() {
        if g.num_ubatches == 1 {
            classes.push(if g.uniform_token_count == 0 {
                Class::TokenKeyed
            } else {
                Class::Decode
            });
            continue;
        }
        match twin_n {
            Some((first, n)) if n != g.num_ubatches => {
                return Err(invalid!(
                    "graphs[{i}].num_ubatches = {} differs from graphs[{first}].num_ubatches = \
                     {n}: one runner's twins share one num_ubatches",
                    g.num_ubatches
                ));
            }
            Some(_) => {}
            None => twin_n = Some((i, g.num_ubatches)),
        }
        let original = |uniform: i32| Graph {
            uniform_token_count: uniform,
            num_ubatches: 1,
            ..*g
        };
        let decode = seen.get(&original(g.uniform_token_count));
        let token_keyed = seen.get(&original(0));
        classes.push(match (decode, token_keyed) {
            (Some(_), None) => Class::Decode,
            (None, Some(_)) => Class::TokenKeyed,
            (Some(d), Some(t)) => {
                return Err(invalid!(
                    "graphs[{i}] (a microbatched twin) has two originals, graphs[{d}] (uniform \
                     decode) and graphs[{t}] (token-keyed): vLLM never captures both"
                ));
            }
            (None, None) => {
                return Err(invalid!(
                    "graphs[{i}] (a microbatched twin, num_ubatches = {}) has no original: a \
                     FULL graph with the same num_tokens {}, num_reqs {}, max_query_len {}, \
                     num_active_loras {}, num_ubatches 1 and uniform_token_count {} or 0",
                    g.num_ubatches,
                    g.num_tokens,
                    g.num_reqs,
                    g.max_query_len,
                    g.num_active_loras,
                    g.uniform_token_count
                ));
            }
        });
    }
    Ok(classes)
}
