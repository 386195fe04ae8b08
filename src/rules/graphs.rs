//! The caller's captured CUDA graphs as data, and vLLM 0.34.0's dispatch over them
//! (`CudaGraphManager._init_candidates`, `dispatch`, `_is_compatible`,
//! `_resolve_effective_loras` in `vllm/v1/worker/gpu/cudagraph_utils.py`; `VLLM_V2.md` 2.8).
//!
//! vLLM builds its tables from a configuration; dpcoord takes the resulting graphs as a flat
//! list ([`Graph`], the C `dp_graph`) and classifies them as vLLM does:
//! - a **uniform-decode graph**: a uniform count `q` and `num_ubatches` 1. It goes to the
//!   decode table keyed `(q, loras, 1)`; a batch of `T` tokens with uniform count `q` looks up
//!   `k = ceil(T / q)` requests there (the smallest graph with `>= k` requests), when `k` is at
//!   most the table's largest request count;
//! - a **token-keyed graph**: no uniform count (PIECEWISE graphs, mixed FULL graphs, varlen
//!   decode graphs). The candidates for `T` tokens are every token-keyed FULL graph of the
//!   smallest FULL size `>= T`, then every PIECEWISE graph of the smallest PIECEWISE size
//!   `>= T`, for the batch's LoRA count; ties keep the table's order;
//! - a **microbatched twin** (`_maybe_ubatch_twin`: `num_ubatches > 1`, FULL, a uniform count)
//!   belongs with its original, the graph with the same mode, tokens, requests, LoRA count and
//!   query bound, `num_ubatches` 1 and the twin's uniform count (a decode original: the twin
//!   goes to the decode table keyed `(q, loras, n)`) or none (a token-keyed original: the twin
//!   sits beside it in the token-keyed list).
//!
//! [`GraphTable::new`] refuses, naming the graph index, field and value, every table vLLM's
//! `_init_candidates` could not have built, because dispatch over it would be a guess:
//! - a mode other than PIECEWISE (1) or FULL (2): a NONE graph is no graph;
//! - `num_tokens < 1`, `num_ubatches < 1`, `num_active_loras < 0`, `num_reqs` other than -1 or
//!   `>= 1`, `uniform_token_count < 0`, `max_query_len` other than -1 or `>= 1` (the encodings);
//! - a PIECEWISE graph with a request count, a uniform count, a query bound or microbatches
//!   (vLLM's PIECEWISE graphs pad no requests, and DBO captures FULL graphs only);
//! - a FULL graph without a request count (every FULL graph vLLM captures pads requests);
//! - more requests than tokens (vLLM's graphs hold `min(T, max_num_seqs)` or `n` of `n q`);
//! - a uniform count with `num_tokens != num_reqs x uniform_token_count` (decode graphs are
//!   `n q` tokens; a twin's count is its tokens over its requests);
//! - a uniform-decode graph with a query bound (vLLM's decode graphs have none);
//! - a twin without a uniform count, with fewer tokens than microbatches, without its original,
//!   with two possible originals (a decode and a token-keyed one), or with another
//!   `num_ubatches` than the table's other twins (one runner has one `n`);
//! - two identical graphs (vLLM's descriptors are dictionary keys);
//! - `decode_query_len < 1`, and more than [`DP_MAX_GRAPHS`] graphs.
//!
//! An empty table is legal (vLLM's manager with `cudagraph_mode` NONE captures nothing): every
//! dispatch over it is NONE. It knows no LoRA cases, so its NONE descriptors carry the
//! caller's LoRA count unresolved.
//!
//! [`GraphTable::device_words`] (`device`) flattens the dispatch index into the words the GPU
//! path's kernel dispatches over.

use crate::error::{invalid, Result};

use check::{check_graph, classify, Class};

use super::{DP_CUDAGRAPH_FULL, DP_CUDAGRAPH_NONE, DP_CUDAGRAPH_PIECEWISE};

/// The most graphs a table holds (a vLLM runner captures a few hundred; the bound keeps the
/// indices in 32 bits and a corrupt count from allocating gigabytes).
pub const DP_MAX_GRAPHS: usize = 65536;

/// One captured CUDA graph (vLLM's `BatchExecutionDescriptor` as captured): the C `dp_graph`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Graph {
    /// 1 PIECEWISE or 2 FULL.
    pub mode: i32,
    /// Tokens the graph runs (>= 1).
    pub num_tokens: i32,
    /// Requests the graph pads to (>= 1); -1 = none (PIECEWISE: no request padding).
    pub num_reqs: i32,
    /// The per-request query length of a uniform-decode graph or a twin; 0 = none.
    pub uniform_token_count: i32,
    /// The query-length bound of a varlen decode graph (>= 1); -1 = none.
    pub max_query_len: i32,
    /// Microbatches the graph was captured for (1 = none; > 1: a microbatched twin).
    pub num_ubatches: i32,
    /// The LoRA case the graph was captured for (>= 0).
    pub num_active_loras: i32,
}

/// What a rank runs: vLLM's `BatchExecutionDescriptor` (a graph, or NONE with the batch's own
/// shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// 0 NONE (eager), 1 PIECEWISE, 2 FULL.
    pub mode: i32,
    /// Tokens the rank runs.
    pub num_tokens: i32,
    /// Requests the rank pads to; -1 = none (a PIECEWISE graph pads no requests).
    pub num_reqs: i32,
    /// The graph's uniform query length; 0 = none.
    pub uniform_token_count: i32,
    /// The graph's query-length bound; -1 = none.
    pub max_query_len: i32,
    /// Microbatches (1 = none).
    pub num_ubatches: i32,
    /// The LoRA case (the rank's own: never agreed).
    pub num_active_loras: i32,
}

impl Descriptor {
    /// An eager descriptor with the batch's own shape (vLLM's `BatchExecutionDescriptor(NONE,
    /// num_tokens, num_reqs, num_active_loras=..., num_ubatches=...)`).
    pub const fn none(num_tokens: i32, num_reqs: i32, loras: i32, num_ubatches: i32) -> Self {
        Descriptor {
            mode: DP_CUDAGRAPH_NONE,
            num_tokens,
            num_reqs,
            uniform_token_count: 0,
            max_query_len: -1,
            num_ubatches,
            num_active_loras: loras,
        }
    }

    /// The descriptor of a captured graph (the graph itself).
    pub const fn of(g: &Graph) -> Self {
        Descriptor {
            mode: g.mode,
            num_tokens: g.num_tokens,
            num_reqs: g.num_reqs,
            uniform_token_count: g.uniform_token_count,
            max_query_len: g.max_query_len,
            num_ubatches: g.num_ubatches,
            num_active_loras: g.num_active_loras,
        }
    }
}

impl std::fmt::Display for Descriptor {
    /// `FULL 40t/40r u1 q- x2` (`r-` no request count, `u-` / `q-` none, `l3` a LoRA case).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            DP_CUDAGRAPH_NONE => "NONE",
            DP_CUDAGRAPH_PIECEWISE => "PIECEWISE",
            DP_CUDAGRAPH_FULL => "FULL",
            _ => "?",
        };
        write!(f, "{mode} {}t/", self.num_tokens)?;
        match self.num_reqs {
            -1 => write!(f, "r-")?,
            r => write!(f, "{r}r")?,
        }
        match self.uniform_token_count {
            0 => write!(f, " u-")?,
            u => write!(f, " u{u}")?,
        }
        match self.max_query_len {
            -1 => write!(f, " q-")?,
            q => write!(f, " q{q}")?,
        }
        write!(f, " x{}", self.num_ubatches)?;
        if self.num_active_loras != 0 {
            write!(f, " l{}", self.num_active_loras)?;
        }
        Ok(())
    }
}

/// Keys below this are looked up in one load (a dense index of at most this many entries a
/// list); larger ones by binary search. vLLM's largest default sizes are 8192 tokens.
const DENSE_KEYS: usize = 16384;

/// Graphs by an ascending key (tokens, or a decode table's request count): `keys` ascending
/// and distinct, the graphs of `keys[i]` are `members[starts[i]..starts[i + 1]]`, in table
/// order; `dense[x]` is the index of the first key `>= x`, for the small `x`.
#[derive(Debug, Default)]
struct SizeIndex {
    keys: Vec<i32>,
    starts: Vec<u32>,
    members: Vec<u32>,
    dense: Vec<u32>,
}

impl SizeIndex {
    /// `(key, graph index)` pairs, grouped by key, ties in table order.
    fn build(mut entries: Vec<(i32, u32)>) -> SizeIndex {
        entries.sort_by_key(|&(key, index)| (key, index));
        let mut ix = SizeIndex::default();
        for (key, index) in entries {
            if ix.keys.last() != Some(&key) {
                ix.keys.push(key);
                ix.starts.push(ix.members.len() as u32);
            }
            ix.members.push(index);
        }
        ix.starts.push(ix.members.len() as u32);
        let top = ix
            .keys
            .last()
            .map_or(0, |&k| (k as usize + 1).min(DENSE_KEYS));
        ix.dense = (0..top)
            .map(|x| ix.keys.partition_point(|&k| (k as usize) < x) as u32)
            .collect();
        ix
    }

    /// The graphs of the smallest key `>= x` (empty when above every key).
    #[inline(always)]
    fn at_least(&self, x: i64) -> &[u32] {
        let i = match usize::try_from(x).ok().and_then(|x| self.dense.get(x)) {
            Some(&i) => i as usize,
            None => self.keys.partition_point(|&k| i64::from(k) < x),
        };
        if i == self.keys.len() {
            return &[];
        }
        &self.members[self.starts[i] as usize..self.starts[i + 1] as usize]
    }
}

/// The token-keyed candidates of one LoRA case.
#[derive(Debug)]
struct Family {
    loras: i32,
    full: SizeIndex,
    piecewise: SizeIndex,
}

/// One decode table `(q, loras, num_ubatches)`, keyed by request count: the first graph with
/// `>= k` requests is vLLM's list entry `k` (the list stored sparse). Within one key, tokens =
/// requests x q, so vLLM's order by tokens is the order by requests, and two graphs with one
/// request count would be duplicates (refused).
#[derive(Debug)]
struct DecodeTable {
    q: i32,
    loras: i32,
    num_ubatches: i32,
    by_reqs: SizeIndex,
}

/// A validated, indexed and hashed copy of the caller's graphs (see the module docs).
#[derive(Debug)]
pub struct GraphTable {
    graphs: Vec<Graph>,
    decode_query_len: i32,
    hash: u32,
    /// The LoRA cases with LoRA (> 0), ascending: `_build_lora_dispatch_map`'s domain.
    lora_cases: Vec<i32>,
    families: Vec<Family>,
    decode: Vec<DecodeTable>,
}

impl GraphTable {
    /// Validates `graphs` (module docs), then indexes and hashes a copy. `decode_query_len`
    /// is the runner's uniform decode query length (1 + speculative tokens), from which every
    /// rank derives `uniform_decode`. Allocates; everything after it does not.
    pub fn new(graphs: &[Graph], decode_query_len: i32) -> Result<GraphTable> {
        if graphs.len() > DP_MAX_GRAPHS {
            return Err(invalid!(
                "num_graphs = {} must be <= {DP_MAX_GRAPHS} (DP_MAX_GRAPHS)",
                graphs.len()
            ));
        }
        if decode_query_len < 1 {
            return Err(invalid!(
                "decode_query_len = {decode_query_len} must be >= 1 (1 + speculative tokens)"
            ));
        }
        for (i, g) in graphs.iter().enumerate() {
            check_graph(i, g)?;
        }
        let classes = classify(graphs)?;
        let mut loras: Vec<i32> = graphs.iter().map(|g| g.num_active_loras).collect();
        loras.sort_unstable();
        loras.dedup();
        let families = loras
            .iter()
            .map(|&l| {
                let entries = |mode: i32| -> Vec<(i32, u32)> {
                    graphs
                        .iter()
                        .zip(&classes)
                        .enumerate()
                        .filter(|(_, (g, &c))| {
                            c == Class::TokenKeyed && g.mode == mode && g.num_active_loras == l
                        })
                        .map(|(i, (g, _))| (g.num_tokens, i as u32))
                        .collect()
                };
                Family {
                    loras: l,
                    full: SizeIndex::build(entries(DP_CUDAGRAPH_FULL)),
                    piecewise: SizeIndex::build(entries(DP_CUDAGRAPH_PIECEWISE)),
                }
            })
            .collect();
        let mut keys: Vec<(i32, i32, i32)> = graphs
            .iter()
            .zip(&classes)
            .filter(|&(_, &c)| c == Class::Decode)
            .map(|(g, _)| (g.uniform_token_count, g.num_active_loras, g.num_ubatches))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let decode = keys
            .into_iter()
            .map(|key| DecodeTable {
                q: key.0,
                loras: key.1,
                num_ubatches: key.2,
                by_reqs: SizeIndex::build(
                    graphs
                        .iter()
                        .zip(&classes)
                        .enumerate()
                        .filter(|(_, (g, &c))| {
                            c == Class::Decode
                                && (g.uniform_token_count, g.num_active_loras, g.num_ubatches)
                                    == key
                        })
                        .map(|(i, (g, _))| (g.num_reqs, i as u32))
                        .collect(),
                ),
            })
            .collect();
        let lora_cases = loras.iter().copied().filter(|&l| l > 0).collect();
        Ok(GraphTable {
            graphs: graphs.to_vec(),
            decode_query_len,
            hash: table_hash(graphs, decode_query_len),
            lora_cases,
            families,
            decode,
        })
    }

    /// FNV-1a (32-bit) over the graph count, `decode_query_len` and every graph's seven words
    /// in order (little-endian), 0 mapped to 1: never 0, so 0 can mean "no table".
    pub fn hash(&self) -> u32 {
        self.hash
    }

    /// The runner's uniform decode query length (1 + speculative tokens).
    pub fn decode_query_len(&self) -> i32 {
        self.decode_query_len
    }

    /// The graphs as given (the GPU path uploads them).
    pub fn graphs(&self) -> &[Graph] {
        &self.graphs
    }

    /// vLLM's `_resolve_effective_loras`: a LoRA count maps to the smallest captured case with
    /// LoRA that holds it, counts above the largest case clamp to it, and counts <= 0 (or a
    /// table without LoRA cases) pass unchanged.
    #[inline(always)]
    pub fn effective_loras(&self, num_active_loras: i32) -> i32 {
        let cases = &self.lora_cases;
        if num_active_loras <= 0 || cases.is_empty() {
            return num_active_loras;
        }
        let i = cases.partition_point(|&c| c < num_active_loras);
        cases[i.min(cases.len() - 1)]
    }

    /// vLLM's `CudaGraphManager.dispatch(num_reqs, num_tokens, uniform_token_count,
    /// num_active_loras, max_query_len, num_ubatches)`: the first compatible graph among the
    /// decode table's entry (with a uniform count) and the token-keyed candidates, else NONE
    /// with the batch's own shape (also for `num_tokens <= 0` and an empty table). A uniform
    /// count <= 0 is none, a `max_query_len` < 0 is none. No allocation.
    #[inline(always)]
    pub fn dispatch(
        &self,
        num_reqs: i32,
        num_tokens: i32,
        uniform_token_count: i32,
        num_active_loras: i32,
        max_query_len: i32,
        num_ubatches: i32,
    ) -> Descriptor {
        let loras = self.effective_loras(num_active_loras);
        let q = Query {
            num_reqs,
            num_tokens,
            uniform: uniform_token_count.max(0),
            loras,
            max_query_len: if max_query_len < 0 { -1 } else { max_query_len },
            num_ubatches,
        };
        if num_tokens > 0 && !self.graphs.is_empty() {
            if let Some(g) = self.find(&q) {
                return Descriptor::of(g);
            }
        }
        Descriptor::none(num_tokens, num_reqs, loras, num_ubatches)
    }

    #[inline(always)]
    fn find(&self, q: &Query) -> Option<&Graph> {
        let graphs = &self.graphs;
        if q.uniform > 0 {
            let key = (q.uniform, q.loras, q.num_ubatches);
            if let Some(t) = self
                .decode
                .iter()
                .find(|t| (t.q, t.loras, t.num_ubatches) == key)
            {
                // k = ceil(T / q), looked up when k < the table's length (largest count + 1).
                let k = (i64::from(q.num_tokens) + i64::from(q.uniform) - 1) / i64::from(q.uniform);
                if let Some(&m) = t.by_reqs.at_least(k).first() {
                    let g = &graphs[m as usize];
                    if q.fits(g) {
                        return Some(g);
                    }
                }
            }
        }
        let f = self.families.iter().find(|f| f.loras == q.loras)?;
        // PIECEWISE graphs are never microbatched: a microbatched lookup skips them.
        let lists = if q.num_ubatches == 1 { 2 } else { 1 };
        for list in [&f.full, &f.piecewise].into_iter().take(lists) {
            for &m in list.at_least(i64::from(q.num_tokens)) {
                let g = &graphs[m as usize];
                if q.fits(g) {
                    return Some(g);
                }
            }
        }
        None
    }
}

/// A dispatch's inputs, LoRA count resolved, encodings normalised.
struct Query {
    num_reqs: i32,
    num_tokens: i32,
    uniform: i32,
    loras: i32,
    max_query_len: i32,
    num_ubatches: i32,
}

impl Query {
    /// vLLM's `_is_compatible`.
    #[inline(always)]
    fn fits(&self, g: &Graph) -> bool {
        (g.uniform_token_count == 0 || g.uniform_token_count == self.uniform)
            && (g.max_query_len == -1
                || (self.max_query_len != -1 && g.max_query_len >= self.max_query_len))
            && (g.num_reqs == -1 || g.num_reqs >= self.num_reqs)
            && g.num_tokens >= self.num_tokens
            && g.num_active_loras == self.loras
            && g.num_ubatches == self.num_ubatches
    }
}

/// FNV-1a, 32-bit, over the table (see [`GraphTable::hash`]).
fn table_hash(graphs: &[Graph], decode_query_len: i32) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let mut h = OFFSET;
    let mut eat = |w: u32| {
        for b in w.to_le_bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(PRIME);
        }
    };
    eat(graphs.len() as u32);
    eat(decode_query_len as u32);
    for w in bytemuck::cast_slice::<Graph, i32>(graphs) {
        eat(*w as u32);
    }
    if h == 0 {
        1
    } else {
        h
    }
}

mod check;
pub(crate) mod device;
#[cfg(test)]
mod tests;
