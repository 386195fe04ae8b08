//! The device form of a [`GraphTable`]: its dispatch index flattened into 32-bit words that the
//! GPU path copies into device memory once (`dp_coordinator_set_graphs`) and the
//! post-processing kernel reads, so that a dispatch there is a few loads, never a scan of the
//! table. The word positions below are the one layout source for Rust and the kernel
//! (`kernels` generates them into the kernel's `layout.h`).
//!
//! Words (every value an `int32` bit pattern, offsets in words from the start):
//! - **header** ([`HEADER_WORDS`]): the table's hash, the graph count, then (count, offset) of
//!   the LoRA cases, of the token directory and of the decode directory;
//! - the **LoRA cases**: the LoRA counts > 0 the graphs were captured for, ascending
//!   (`_resolve_effective_loras`' domain);
//! - the **directories**, one [`DIR_WORDS`] entry per block: the token directory has one block
//!   per (LoRA case, `num_ubatches`) of the token-keyed graphs, the decode directory one per
//!   decode table `(q, LoRA case, num_ubatches)`. An entry holds its key (uniform count: 0 for
//!   token blocks; LoRA case; microbatches) and where its block lies;
//! - the **blocks**: entries of [`ENTRY_WORDS`] words for lookup keys `x` (tokens, or a decode
//!   table's request count `k`). An entry is what the dispatch needs for every `x` whose
//!   smallest key `>= x` is its key: the first FULL candidate (tokens, requests, uniform count,
//!   query bound; tokens 0 = none), where the remaining FULL candidates of that size are (a run
//!   of [`REST_WORDS`]-word records, in table order), and the smallest PIECEWISE size (0 =
//!   none; token blocks of `num_ubatches` 1 only). A block stores `dense_len` entries indexed by
//!   `x` itself (one load), then one entry per key, then the keys ascending (a binary search,
//!   for `x >= dense_len`); `x` above the block's largest key has no entry;
//! - the **rest records** of every block.
//!
//! Every FULL candidate of a token block has the block's `num_ubatches` (the dispatch's
//! compatibility rule demands it), but its size is the smallest FULL size `>= x` over all the
//! case's token-keyed FULL graphs, as vLLM's candidate lists are built. A decode entry holds
//! the first graph of its decode table with `>= k` requests (uniform count `q`), nothing more
//! (vLLM looks at that one). A PIECEWISE candidate always fits a query that reaches it (no
//! request count, uniform count or query bound; `num_ubatches` 1), so its size is all an entry
//! keeps of it.
//!
//! Dense entries cost 32 bytes per `x`: a block gets `min(largest key + 1,` [`DENSE_KEYS`]`)` of
//! them while the table's dense words stay within [`DENSE_BUDGET`], and none after (binary
//! search only), so no table can make the device form large.

use super::{GraphTable, SizeIndex, DENSE_KEYS};

/// Header word: the table's hash ([`GraphTable::hash`]).
pub(crate) const HASH: usize = 0;
/// Header word: the number of graphs (0: every dispatch is NONE).
pub(crate) const NUM_GRAPHS: usize = 1;
/// Header word: the number of LoRA cases.
pub(crate) const LORA_COUNT: usize = 2;
/// Header word: the offset of the LoRA cases.
pub(crate) const LORA_AT: usize = 3;
/// Header word: the number of token directory entries.
pub(crate) const TOKEN_COUNT: usize = 4;
/// Header word: the offset of the token directory.
pub(crate) const TOKEN_AT: usize = 5;
/// Header word: the number of decode directory entries.
pub(crate) const DECODE_COUNT: usize = 6;
/// Header word: the offset of the decode directory.
pub(crate) const DECODE_AT: usize = 7;
/// Words of the header.
pub(crate) const HEADER_WORDS: usize = 8;

/// Words of one directory entry.
pub(crate) const DIR_WORDS: usize = 8;
/// Directory word: the block's uniform count (a decode table's `q`; 0 for a token block).
pub(crate) const DIR_UNIFORM: usize = 0;
/// Directory word: the block's LoRA case.
pub(crate) const DIR_LORAS: usize = 1;
/// Directory word: the block's `num_ubatches`.
pub(crate) const DIR_UBATCHES: usize = 2;
/// Directory word: the block's largest key (a larger `x` has no entry).
pub(crate) const DIR_MAX_KEY: usize = 3;
/// Directory word: entries indexed by `x` itself, for `x < dense_len`.
pub(crate) const DIR_DENSE_LEN: usize = 4;
/// Directory word: the offset of the block's entries (`dense_len` by `x`, then one per key).
pub(crate) const DIR_ENTRIES_AT: usize = 5;
/// Directory word: the number of keys.
pub(crate) const DIR_NUM_KEYS: usize = 6;
/// Directory word: the offset of the keys, ascending.
pub(crate) const DIR_KEYS_AT: usize = 7;

/// Words of one entry.
pub(crate) const ENTRY_WORDS: usize = 8;
/// Entry word: the first FULL candidate's tokens (0: no FULL candidate).
pub(crate) const E_TOKENS: usize = 0;
/// Entry word: the first FULL candidate's requests.
pub(crate) const E_REQS: usize = 1;
/// Entry word: the first FULL candidate's uniform count (0 = none).
pub(crate) const E_UNIFORM: usize = 2;
/// Entry word: the first FULL candidate's query bound (-1 = none).
pub(crate) const E_MQL: usize = 3;
/// Entry word: how many more FULL candidates of that size follow (rest records).
pub(crate) const E_REST_COUNT: usize = 4;
/// Entry word: the offset of the first rest record.
pub(crate) const E_REST_AT: usize = 5;
/// Entry word: the smallest PIECEWISE size `>= x` (0: none).
pub(crate) const E_PIECEWISE: usize = 6;

/// Words of one rest record: tokens, requests, uniform count, query bound (the order of the
/// entry's first four words).
pub(crate) const REST_WORDS: usize = 4;

/// The most words of dense entries one table's device form holds (16 MiB).
pub(crate) const DENSE_BUDGET: usize = 1 << 22;

/// A block before it is laid out.
struct Block {
    dir: [i32; 3],
    keys: Vec<i32>,
    /// One entry per key; `E_REST_AT` holds the index of its first rest record until layout.
    entries: Vec<[i32; ENTRY_WORDS]>,
}

/// Offsets are words of a table that [`DP_MAX_GRAPHS`](super::DP_MAX_GRAPHS) and the budget
/// keep far below 2^31.
fn word(offset: usize) -> i32 {
    i32::try_from(offset).expect("the device form stays below 2^31 words")
}

impl GraphTable {
    /// The table as the GPU path's post-processing kernel reads it: see `rules::graphs`'s
    /// device form (the words are `int32` bit patterns). Pure; allocates.
    pub fn device_words(&self) -> Vec<u32> {
        let mut rest: Vec<[i32; REST_WORDS]> = Vec::new();
        let mut token = Vec::new();
        for f in &self.families {
            let mut ubatches: Vec<i32> = f
                .full
                .members
                .iter()
                .map(|&m| self.graphs[m as usize].num_ubatches)
                .chain([1])
                .collect();
            ubatches.sort_unstable();
            ubatches.dedup();
            for n in ubatches {
                let mut keys: Vec<i32> = f.full.keys.clone();
                if n == 1 {
                    keys.extend(&f.piecewise.keys);
                }
                keys.sort_unstable();
                keys.dedup();
                if keys.is_empty() {
                    continue;
                }
                let entries = keys
                    .iter()
                    .map(|&x| self.token_entry(&f.full, &f.piecewise, n, x, &mut rest))
                    .collect();
                token.push(Block {
                    dir: [0, f.loras, n],
                    keys,
                    entries,
                });
            }
        }
        let decode: Vec<Block> = self
            .decode
            .iter()
            .map(|t| Block {
                dir: [t.q, t.loras, t.num_ubatches],
                keys: t.by_reqs.keys.clone(),
                entries: t
                    .by_reqs
                    .starts
                    .iter()
                    .take(t.by_reqs.keys.len())
                    .map(|&s| {
                        let g = &self.graphs[t.by_reqs.members[s as usize] as usize];
                        [g.num_tokens, g.num_reqs, t.q, g.max_query_len, 0, 0, 0, 0]
                    })
                    .collect(),
            })
            .collect();
        self.lay_out(&token, &decode, &rest)
    }

    /// The token entry for key `x` of a block of `num_ubatches` `n`: the FULL candidates of the
    /// smallest FULL size `>= x` with `n` microbatches (the first inline, the others appended to
    /// `rest`), and, for `n` 1, the smallest PIECEWISE size `>= x`.
    fn token_entry(
        &self,
        full: &SizeIndex,
        piecewise: &SizeIndex,
        n: i32,
        x: i32,
        rest: &mut Vec<[i32; REST_WORDS]>,
    ) -> [i32; ENTRY_WORDS] {
        let mut fulls = full
            .at_least(i64::from(x))
            .iter()
            .map(|&m| &self.graphs[m as usize])
            .filter(|g| g.num_ubatches == n)
            .map(|g| {
                [
                    g.num_tokens,
                    g.num_reqs,
                    g.uniform_token_count,
                    g.max_query_len,
                ]
            });
        let first = fulls.next().unwrap_or([0, 0, 0, -1]);
        let rest_at = rest.len();
        rest.extend(fulls);
        let pw = match n {
            1 => piecewise
                .at_least(i64::from(x))
                .first()
                .map_or(0, |&m| self.graphs[m as usize].num_tokens),
            _ => 0,
        };
        let [t, r, u, q] = first;
        let more = word(rest.len() - rest_at);
        [t, r, u, q, more, word(rest_at), pw, 0]
    }

    /// The words: header, LoRA cases, directories, blocks (each 8-word aligned), rest records.
    fn lay_out(&self, token: &[Block], decode: &[Block], rest: &[[i32; REST_WORDS]]) -> Vec<u32> {
        let align = |at: usize| at.next_multiple_of(ENTRY_WORDS);
        let cases = &self.lora_cases;
        let token_at = HEADER_WORDS + cases.len();
        let decode_at = token_at + DIR_WORDS * token.len();
        let mut at = align(decode_at + DIR_WORDS * decode.len());
        let mut budget = DENSE_BUDGET;
        // (dense_len, entries_at, keys_at) of every block.
        let mut places = Vec::new();
        for b in token.iter().chain(decode) {
            let max = *b.keys.last().expect("a block has keys") as usize;
            let mut dense = (max + 1).min(DENSE_KEYS);
            if dense * ENTRY_WORDS > budget {
                dense = 0;
            }
            budget -= dense * ENTRY_WORDS;
            let keys_at = at + ENTRY_WORDS * (dense + b.keys.len());
            places.push((dense, at, keys_at));
            at = align(keys_at + b.keys.len());
        }
        let rest_base = at;
        let mut w = vec![0u32; rest_base + REST_WORDS * rest.len()];
        let header = [
            (HASH, self.hash),
            (NUM_GRAPHS, self.graphs.len() as u32),
            (LORA_COUNT, cases.len() as u32),
            (LORA_AT, HEADER_WORDS as u32),
            (TOKEN_COUNT, token.len() as u32),
            (TOKEN_AT, token_at as u32),
            (DECODE_COUNT, decode.len() as u32),
            (DECODE_AT, decode_at as u32),
        ];
        for (i, v) in header {
            w[i] = v;
        }
        let mut put = |at: usize, values: &[i32]| {
            for (i, &v) in values.iter().enumerate() {
                w[at + i] = v as u32;
            }
        };
        put(HEADER_WORDS, cases);
        let dirs = (0..token.len())
            .map(|i| token_at + DIR_WORDS * i)
            .chain((0..decode.len()).map(|i| decode_at + DIR_WORDS * i));
        let blocks = token.iter().chain(decode).zip(&places).zip(dirs);
        for ((b, &(dense, entries_at, keys_at)), dir) in blocks {
            let max = *b.keys.last().expect("a block has keys");
            put(
                dir,
                &[
                    b.dir[0],
                    b.dir[1],
                    b.dir[2],
                    max,
                    word(dense),
                    word(entries_at),
                    word(b.keys.len()),
                    word(keys_at),
                ],
            );
            let placed = |e: &[i32; ENTRY_WORDS]| {
                let mut e = *e;
                e[E_REST_AT] = word(rest_base + REST_WORDS * e[E_REST_AT] as usize);
                e
            };
            // x in 0..dense: the entry of the smallest key >= x.
            for x in 0..dense {
                let i = b.keys.partition_point(|&k| (k as usize) < x);
                put(entries_at + ENTRY_WORDS * x, &placed(&b.entries[i]));
            }
            for (i, e) in b.entries.iter().enumerate() {
                put(entries_at + ENTRY_WORDS * (dense + i), &placed(e));
            }
            put(keys_at, &b.keys);
        }
        for (i, r) in rest.iter().enumerate() {
            put(rest_base + REST_WORDS * i, r);
        }
        w
    }
}

#[cfg(test)]
mod tests;
