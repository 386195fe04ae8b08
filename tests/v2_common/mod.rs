//! Helpers shared by the V2 test binaries (tests/rules_v2_*.rs): vLLM 0.34.0's graph tables
//! built the way vLLM builds them, from a configuration, and the steps of several ranks run
//! through the library.
//!
//! [`VllmCfg::build`] transcribes, for the defaults of a non-SM100 GPU and no dynamic
//! speculative decoding: `VllmConfig._set_cudagraph_sizes` (the shared capture sizes),
//! `_split_cudagraph_capture_sizes` (prefill token sizes, decode request sizes, the recorded
//! max), `decode_cudagraph_capture_shapes`, `get_varlen_decode_cudagraph_token_sizes`,
//! `_raise_dbo_thresholds_for_spec_decode`, and `CudaGraphManager._init_candidates` with
//! `_maybe_ubatch_twin` (vllm/config/vllm.py, vllm/config/compilation.py,
//! vllm/v1/worker/gpu/cudagraph_utils.py). It returns the flat graph list in vLLM's
//! construction order, and vLLM's own split of it into decode and token-keyed descriptors
//! (which the naive model of tests/rules_v2_props.rs indexes, instead of re-deriving it).
#![allow(dead_code)]

use dpcoord::ffi::{
    dp_batch_result, dp_batch_result_init, dp_decide_options, dp_decide_options_init,
    dp_decide_slots, dp_graph_table, dp_graph_table_init, dp_graphs, dp_graphs_create,
    dp_graphs_destroy, dp_last_error, dp_make_slot, dp_status, Slot,
};
use dpcoord::rules::{
    decide_v2, make_v2_record, Agreement, Graph, GraphTable, Request, UbatchConfig, V2Config,
    V2Record, DP_RULES_VLLM_V2,
};
use dpcoord::Error;

pub const NONE: i32 = 0;
pub const PIECEWISE: i32 = 1;
pub const FULL: i32 = 2;

/// vLLM's `CUDAGraphMode` as configured (the tuple modes included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgMode {
    None,
    Piecewise,
    Full,
    FullDecodeOnly,
    FullAndPiecewise,
}

impl CgMode {
    pub const ALL: [CgMode; 5] = [
        CgMode::None,
        CgMode::Piecewise,
        CgMode::Full,
        CgMode::FullDecodeOnly,
        CgMode::FullAndPiecewise,
    ];

    fn separate_routine(self) -> bool {
        matches!(self, CgMode::FullDecodeOnly | CgMode::FullAndPiecewise)
    }

    /// The runtime mode of decode batches.
    fn decode_mode(self) -> i32 {
        match self {
            CgMode::None => NONE,
            CgMode::Piecewise => PIECEWISE,
            CgMode::Full | CgMode::FullDecodeOnly | CgMode::FullAndPiecewise => FULL,
        }
    }

    /// The runtime mode of mixed batches.
    fn mixed_mode(self) -> i32 {
        match self {
            CgMode::None | CgMode::FullDecodeOnly => NONE,
            CgMode::Piecewise | CgMode::FullAndPiecewise => PIECEWISE,
            CgMode::Full => FULL,
        }
    }
}

/// DBO / ubatch settings (vLLM's `ParallelConfig`: `enable_dbo` gives 2 microbatches,
/// `ubatch_size` n > 1 gives n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dbo {
    pub num_ubatches: i32,
    pub decode_threshold: i32,
    pub prefill_threshold: i32,
}

/// The configuration a vLLM runner builds its graph table from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VllmCfg {
    pub mode: CgMode,
    pub max_num_seqs: i32,
    pub max_num_batched_tokens: i32,
    /// Speculative tokens K (decode_query_len = 1 + K).
    pub num_spec: i32,
    /// Adaptive verification: varlen decode graphs replace the uniform-decode ones.
    pub adaptive: bool,
    /// `get_lora_capture_cases`: `[0]` without LoRA.
    pub lora_cases: Vec<i32>,
    /// Microbatching (a ubatch runner exists: DBO configured and dp_size > 1).
    pub dbo: Option<Dbo>,
    /// `prefill_cudagraph_capture_token_sizes`, when set explicitly.
    pub prefill_sizes: Option<Vec<i32>>,
    /// `decode_cudagraph_capture_request_sizes`, when set explicitly.
    pub decode_sizes: Option<Vec<i32>>,
    /// `max_decode_cudagraph_capture_tokens`, when set.
    pub max_decode_tokens: Option<i32>,
    /// An EAGLE-style drafter with K >= 2 (its one-token draft decode sizes count towards the
    /// recorded max).
    pub eagle_draft: bool,
}

/// A table as vLLM builds it.
#[derive(Debug, Clone)]
pub struct Built {
    /// `decode_descs + token_keyed_descs`: the flat list, in construction order.
    pub graphs: Vec<Graph>,
    pub decode: Vec<Graph>,
    pub token_keyed: Vec<Graph>,
    pub lora_cases: Vec<i32>,
    pub decode_query_len: i32,
    /// The thresholds after `_raise_dbo_thresholds_for_spec_decode`.
    pub dbo: Option<Dbo>,
}

impl Built {
    pub fn table(&self) -> GraphTable {
        GraphTable::new(&self.graphs, self.decode_query_len).expect("vLLM's table is valid")
    }
}

fn cdiv(a: i32, b: i32) -> i32 {
    (a + b - 1) / b
}

fn sorted_set(v: impl IntoIterator<Item = i32>) -> Vec<i32> {
    let mut v: Vec<i32> = v.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// `_walk_grid`: sizes 1, ..., `limit`, each the next multiple of the largest power of two
/// not above `step(size)`.
fn walk_grid(limit: i32, step: impl Fn(f64) -> f64) -> Vec<i32> {
    let mut grid = Vec::new();
    let mut size = 1;
    while size < limit {
        grid.push(size);
        let s = step(f64::from(size)).max(1.0);
        let stride = 1i32 << (s.log2().floor() as i32).max(0);
        size = (size / stride + 1) * stride;
    }
    if limit > 0 {
        grid.push(limit);
    }
    grid
}

/// `decode_cudagraph_capture_grid`.
pub fn decode_grid(max_requests: i32) -> Vec<i32> {
    walk_grid(max_requests, |n| 0.65 * n.powf(2.0 / 3.0))
}

/// `varlen_decode_cudagraph_capture_grid` (no dense head).
fn varlen_grid(max_tokens: i32) -> Vec<i32> {
    if max_tokens == 0 {
        return Vec::new();
    }
    let mut grid = vec![1, 2, 4, 8];
    let mut low = 8;
    while low < 1024 {
        grid.extend((low + low / 4..=2 * low).step_by((low / 4) as usize));
        low *= 2;
    }
    grid.extend((1024..4096).step_by(128));
    grid.extend((4096..max_tokens.max(4096)).step_by(256));
    sorted_set(
        grid.into_iter()
            .filter(|&s| s < max_tokens)
            .chain([max_tokens]),
    )
}

/// `decode_cudagraph_capture_shapes(sizes, {q: max_reqs}, max_tokens)`: `(n, q)` pairs.
fn decode_shapes(sizes: &[i32], q: i32, max_reqs: i32, max_tokens: i32) -> Vec<(i32, i32)> {
    let sizes = sorted_set(sizes.iter().copied());
    let limit = max_reqs.min(max_tokens / q);
    if limit < 1 {
        return Vec::new();
    }
    let reach = sizes.partition_point(|&s| s < limit) + 1;
    sorted_set(
        sizes[..reach.min(sizes.len())]
            .iter()
            .map(|&n| n.min(limit)),
    )
    .into_iter()
    .map(|n| (n, q))
    .collect()
}

impl VllmCfg {
    /// E-base: FULL_AND_PIECEWISE, 64 seqs, 2048 tokens.
    pub fn e_base() -> VllmCfg {
        VllmCfg {
            mode: CgMode::FullAndPiecewise,
            max_num_seqs: 64,
            max_num_batched_tokens: 2048,
            num_spec: 0,
            adaptive: false,
            lora_cases: vec![0],
            dbo: None,
            prefill_sizes: None,
            decode_sizes: None,
            max_decode_tokens: None,
            eagle_draft: false,
        }
    }

    /// E-dbo: E-base with DBO, 256 seqs, 4096 tokens, thresholds 32/512.
    pub fn e_dbo() -> VllmCfg {
        VllmCfg {
            max_num_seqs: 256,
            max_num_batched_tokens: 4096,
            dbo: Some(Dbo {
                num_ubatches: 2,
                decode_threshold: 32,
                prefill_threshold: 512,
            }),
            ..VllmCfg::e_base()
        }
    }

    /// E-dbo-spec4: DBO with K = 3 (q = 4), 128 seqs.
    pub fn e_dbo_spec4() -> VllmCfg {
        VllmCfg {
            max_num_seqs: 128,
            num_spec: 3,
            ..VllmCfg::e_dbo()
        }
    }

    /// E-spec4: E-dbo-spec4 without DBO.
    pub fn e_spec4() -> VllmCfg {
        VllmCfg {
            dbo: None,
            ..VllmCfg::e_dbo_spec4()
        }
    }

    /// E-ub3: `ubatch_size` 3, thresholds 24/96.
    pub fn e_ub3() -> VllmCfg {
        VllmCfg {
            dbo: Some(Dbo {
                num_ubatches: 3,
                decode_threshold: 24,
                prefill_threshold: 96,
            }),
            ..VllmCfg::e_dbo()
        }
    }

    /// E-varlen: E-base with K = 3 and adaptive verification.
    pub fn e_varlen() -> VllmCfg {
        VllmCfg {
            num_spec: 3,
            adaptive: true,
            ..VllmCfg::e_base()
        }
    }

    /// E-wide-decode: token graphs 8, 16, 64; decode graphs of 1, 4, 16, 128 requests (128
    /// seqs).
    pub fn e_wide_decode() -> VllmCfg {
        VllmCfg {
            max_num_seqs: 128,
            prefill_sizes: Some(vec![8, 16, 64]),
            decode_sizes: Some(vec![1, 4, 16, 128]),
            ..VllmCfg::e_base()
        }
    }

    /// E-ft: E-base with fault tolerance (the table is E-base's).
    pub fn e_ft() -> VllmCfg {
        VllmCfg::e_base()
    }

    pub fn decode_query_len(&self) -> i32 {
        1 + self.num_spec
    }

    /// The shared capture sizes (`_set_cudagraph_sizes`, defaults, non-SM100) and the
    /// max before the split.
    fn shared_sizes(&self) -> Vec<i32> {
        let q = self.decode_query_len();
        let seqs = self.max_num_seqs;
        let mut max_cap = (seqs * q * 2).min(512);
        let mut uniform = Vec::new();
        if q > 1 {
            let request_counts = |max_reqs: i32| {
                let max_reqs = max_reqs.min(512);
                let mut c: Vec<i32> = [1, 2, 4].into_iter().filter(|&n| n <= max_reqs).collect();
                c.extend((8..(max_reqs + 1).min(256)).step_by(8));
                c.extend((256..=max_reqs).step_by(16));
                c.push(max_reqs);
                sorted_set(c)
            };
            uniform = request_counts(seqs)
                .into_iter()
                .map(|n| n * q)
                .filter(|&t| t <= max_cap)
                .collect();
        } else if seqs <= max_cap {
            uniform = vec![seqs];
        }
        let max_num_tokens = self.max_num_batched_tokens;
        max_cap = max_cap.min(max_num_tokens);
        let mut sizes: Vec<i32> = [1, 2, 4].into_iter().filter(|&s| s <= max_cap).collect();
        if max_cap >= 8 {
            sizes.extend((8..(max_cap + 1).min(256)).step_by(8));
        }
        if max_cap >= 256 {
            sizes.extend((256..=max_cap).step_by(16));
        }
        if max_num_tokens <= max_cap && !sizes.contains(&max_num_tokens) {
            sizes.push(max_num_tokens);
        }
        sizes.extend(uniform.into_iter().filter(|&s| s <= max_num_tokens));
        sorted_set(sizes)
    }

    /// Builds the table (module docs).
    pub fn build(&self) -> Built {
        let q = self.decode_query_len();
        let seqs = self.max_num_seqs;
        let max_num_tokens = self.max_num_batched_tokens;
        // _raise_dbo_thresholds_for_spec_decode
        let dbo = self.dbo.map(|d| {
            let floor = d.num_ubatches * q;
            Dbo {
                decode_threshold: d.decode_threshold.max(floor),
                prefill_threshold: d.prefill_threshold.max(floor),
                ..d
            }
        });
        let mut built = Built {
            graphs: Vec::new(),
            decode: Vec::new(),
            token_keyed: Vec::new(),
            lora_cases: self.lora_cases.clone(),
            decode_query_len: q,
            dbo,
        };
        if self.mode == CgMode::None {
            return built;
        }
        // _set_cudagraph_sizes, then _split_cudagraph_capture_sizes.
        let shared = self.shared_sizes();
        let shared_max = *shared.last().expect("sizes");
        let prefill: Vec<i32> = match &self.prefill_sizes {
            Some(p) => sorted_set(p.iter().copied().filter(|&s| 1 <= s && s <= max_num_tokens)),
            None => shared.clone(),
        };
        let decode_sizes: Vec<i32> = match &self.decode_sizes {
            Some(d) => sorted_set(d.iter().copied().filter(|&s| 1 <= s && s <= seqs)),
            None => sorted_set(
                shared
                    .iter()
                    .filter(|&&s| cdiv(s, q) * q <= shared_max)
                    .map(|&s| cdiv(s, q).min(seqs)),
            ),
        };
        let max_decode_requests = decode_sizes.iter().copied().max().unwrap_or(0);
        let decode_max_tokens =
            max_num_tokens.min(self.max_decode_tokens.unwrap_or(max_num_tokens));
        let mut decode_tokens: Vec<i32> = decode_shapes(&decode_sizes, q, seqs, decode_max_tokens)
            .into_iter()
            .map(|(n, q)| n * q)
            .collect();
        if self.eagle_draft && self.num_spec >= 2 && !decode_sizes.is_empty() {
            decode_tokens.extend(
                decode_shapes(&decode_grid(seqs), 1, seqs, decode_max_tokens)
                    .into_iter()
                    .map(|(n, _)| n),
            );
        }
        let varlen_sizes = || {
            let cap = max_decode_requests * q;
            varlen_grid(
                cap.min(max_num_tokens)
                    .min(self.max_decode_tokens.unwrap_or(cap)),
            )
        };
        if self.adaptive {
            decode_tokens.extend(varlen_sizes());
        }
        let mut token_sizes = decode_tokens.clone();
        if self.mode.mixed_mode() != NONE {
            token_sizes.extend(prefill.iter().copied());
        }
        let recorded_max = token_sizes.iter().copied().max().unwrap_or(0);
        if token_sizes.is_empty() {
            return built;
        }
        // CudaGraphManager._init_candidates
        let decode_mode = self.mode.decode_mode();
        let mixed_mode = self.mode.mixed_mode();
        let capture_decode = self.mode.separate_routine() && decode_mode != NONE;
        let twin = |g: &Graph| -> Option<Graph> {
            let d = dbo?;
            if g.mode != FULL || g.num_reqs == -1 {
                return None;
            }
            let (u, rem) = (g.num_tokens / g.num_reqs, g.num_tokens % g.num_reqs);
            if rem != 0 || (g.uniform_token_count != 0 && g.uniform_token_count != u) {
                return None;
            }
            if g.num_tokens < d.num_ubatches || g.num_tokens < d.decode_threshold {
                return None;
            }
            Some(Graph {
                num_ubatches: d.num_ubatches,
                uniform_token_count: u,
                ..*g
            })
        };
        let graph = |mode, num_tokens, num_reqs, uniform, mql, loras| Graph {
            mode,
            num_tokens,
            num_reqs,
            uniform_token_count: uniform,
            max_query_len: mql,
            num_ubatches: 1,
            num_active_loras: loras,
        };
        if capture_decode && self.adaptive {
            for t in varlen_sizes() {
                for &l in &self.lora_cases {
                    built
                        .token_keyed
                        .push(graph(decode_mode, t, t.min(seqs), 0, q, l));
                }
            }
        } else if capture_decode {
            let max_tokens = recorded_max.min(self.max_decode_tokens.unwrap_or(recorded_max));
            for (n, q) in decode_shapes(&decode_sizes, q, seqs, max_tokens) {
                for &l in &self.lora_cases {
                    let g = graph(decode_mode, n * q, n, q, -1, l);
                    built.decode.push(g);
                    built.decode.extend(twin(&g));
                }
            }
        }
        if mixed_mode != NONE {
            for &t in &prefill {
                for &l in &self.lora_cases {
                    let reqs = if mixed_mode == FULL { t.min(seqs) } else { -1 };
                    let g = graph(mixed_mode, t, reqs, 0, -1, l);
                    built.token_keyed.push(g);
                    built.token_keyed.extend(twin(&g));
                }
            }
        }
        built.graphs = built
            .decode
            .iter()
            .chain(&built.token_keyed)
            .copied()
            .collect();
        built
    }
}

/// One rank's V2 inputs (the example notation: `T t / R r`, `u`, `q`, flags B D S E).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub t: i32,
    pub r: i32,
    pub u: i32,
    pub q: i32,
    pub b: bool,
    pub s: bool,
    pub e: bool,
    pub loras: i32,
}

/// `T t / R r`, no uniform count, no query bound, no flags.
pub fn step(t: i32, r: i32) -> Step {
    Step {
        t,
        r,
        u: 0,
        q: -1,
        b: false,
        s: false,
        e: false,
        loras: 0,
    }
}

impl Step {
    /// A uniform decode of `u` tokens per request with the query bound `u` (vLLM sets both).
    pub fn u(self, u: i32) -> Step {
        Step { u, q: u, ..self }
    }
    pub fn q(self, q: i32) -> Step {
        Step { q, ..self }
    }
    pub fn b(self) -> Step {
        Step { b: true, ..self }
    }
    pub fn s(self) -> Step {
        Step { s: true, ..self }
    }
    pub fn e(self) -> Step {
        Step { e: true, ..self }
    }
    pub fn loras(self, loras: i32) -> Step {
        Step { loras, ..self }
    }

    /// The V2 request of this step under `built`'s microbatching configuration.
    pub fn request(&self, dbo: Option<Dbo>) -> Request {
        Request {
            rules: DP_RULES_VLLM_V2,
            num_tokens_unpadded: self.t,
            num_reqs: self.r,
            uniform_token_count: self.u,
            max_query_len: self.q,
            allow_microbatching: self.b,
            allow_skip_drafts: self.s,
            need_eager: self.e,
            num_active_loras: self.loras,
            ubatch: match dbo {
                Some(d) => UbatchConfig {
                    enabled: true,
                    num_ubatches: d.num_ubatches,
                    decode_token_threshold: d.decode_threshold,
                    prefill_token_threshold: d.prefill_threshold,
                },
                None => UbatchConfig::default(),
            },
            ..Request::default()
        }
    }
}

/// A V2 step across ranks: each rank's record, then each live rank's decision and array
/// (`None` for a dead rank).
pub struct Run {
    pub records: Vec<V2Record>,
    pub agreements: Vec<Option<Agreement>>,
    pub arrays: Vec<Option<Vec<i32>>>,
}

impl Run {
    /// Rank `r`'s agreement.
    pub fn at(&self, r: usize) -> Agreement {
        self.agreements[r].expect("a live rank")
    }

    /// Rank `r`'s array.
    pub fn array(&self, r: usize) -> &[i32] {
        self.arrays[r].as_deref().expect("a live rank")
    }

    /// Every live rank's agreement.
    pub fn live(&self) -> impl Iterator<Item = (usize, Agreement)> + '_ {
        self.agreements
            .iter()
            .enumerate()
            .filter_map(|(r, a)| a.map(|a| (r, a)))
    }
}

/// Sentinel of arrays a call did not write.
pub const SENTINEL: i32 = -777;

/// A dead rank's record: garbage that must not be read.
pub const DEAD: V2Record = V2Record {
    num_tokens: 4321,
    cg_mode: 9,
    uniform_token_count: -3,
    max_query_len: 0,
    allow_ubatching: 7,
    num_reqs: -1,
    allow_skip_drafts: 3,
    num_active_loras: -2,
};

/// Runs `steps` (one per rank; `None` = a dead rank) through `make_v2_record` and
/// `decide_v2` on every live rank, with `built`'s table (or none) and microbatching config;
/// and through the C host path (`dp_make_slot`, `dp_decide_slots`), which must give every
/// live rank the same result ([`assert_host_path_agrees`]).
pub fn run(built: &Built, with_table: bool, steps: &[Option<Step>]) -> Result<Run, Error> {
    let run = run_rules(built, with_table, steps)?;
    RECORDER.with(|r| {
        if let Some(cases) = r.borrow_mut().as_mut() {
            cases.push(Case {
                built: built.clone(),
                with_table,
                steps: steps.to_vec(),
                agreements: run.agreements.clone(),
                arrays: run.arrays.clone(),
            });
        }
    });
    let reqs: Vec<Option<Request>> = steps
        .iter()
        .map(|s| s.map(|s| s.request(built.dbo)))
        .collect();
    let graphs = with_table.then_some((&built.graphs[..], built.decode_query_len));
    assert_host_path_agrees(graphs, &reqs, &run);
    Ok(run)
}

/// One step [`run`] decided, as [`record_cases`] collects it.
pub struct Case {
    pub built: Built,
    pub with_table: bool,
    pub steps: Vec<Option<Step>>,
    pub agreements: Vec<Option<Agreement>>,
    pub arrays: Vec<Option<Vec<i32>>>,
}

thread_local! {
    static RECORDER: std::cell::RefCell<Option<Vec<Case>>> = const { std::cell::RefCell::new(None) };
}

/// Every step [`run`] decides on this thread while `f` runs.
pub fn record_cases(f: impl FnOnce()) -> Vec<Case> {
    RECORDER.with(|r| *r.borrow_mut() = Some(Vec::new()));
    f();
    RECORDER.with(|r| r.borrow_mut().take().unwrap_or_default())
}

/// A graph table handle for `graphs` (`None`: no table), destroyed on drop.
pub struct Handle(pub *mut dp_graphs);

impl Handle {
    pub fn new(graphs: Option<(&[Graph], i32)>) -> Handle {
        let Some((graphs, dql)) = graphs else {
            return Handle(std::ptr::null_mut());
        };
        let mut t = std::mem::MaybeUninit::<dp_graph_table>::zeroed();
        dp_graph_table_init(t.as_mut_ptr());
        // SAFETY: initialised by dp_graph_table_init.
        let mut t = unsafe { t.assume_init() };
        t.graphs = graphs.as_ptr();
        t.num_graphs = graphs.len() as i32;
        t.decode_query_len = dql;
        let mut h = std::ptr::null_mut();
        assert_eq!(
            dp_graphs_create(&t, &mut h),
            dp_status::DP_OK,
            "{}",
            last_error()
        );
        Handle(h)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        assert_eq!(dp_graphs_destroy(self.0), dp_status::DP_OK);
    }
}

/// This thread's `dp_last_error()`.
pub fn last_error() -> String {
    // SAFETY: a NUL-terminated string valid until the next failing call on this thread.
    unsafe { std::ffi::CStr::from_ptr(dp_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Options with `graphs` and the live mask (`None`: every rank live).
pub fn options(graphs: &Handle, live: Option<&[u8]>) -> dp_decide_options {
    let mut o = std::mem::MaybeUninit::<dp_decide_options>::zeroed();
    dp_decide_options_init(o.as_mut_ptr());
    // SAFETY: initialised by dp_decide_options_init.
    let mut o = unsafe { o.assume_init() };
    o.graphs = graphs.0;
    o.active_ranks = live.map_or(std::ptr::null(), <[u8]>::as_ptr);
    o
}

/// The same step through the C host path: every live rank's `dp_make_slot` with the table,
/// the slots gathered (dead ranks' slots garbage), every live rank's `dp_decide_slots`; each
/// result and array must be the rules' for that rank.
pub fn assert_host_path_agrees(
    graphs: Option<(&[Graph], i32)>,
    reqs: &[Option<Request>],
    run: &Run,
) {
    let handle = Handle::new(graphs);
    let dp = reqs.len();
    let live: Vec<u8> = reqs.iter().map(|r| u8::from(r.is_some())).collect();
    let live = live.contains(&0).then_some(&live[..]);
    let opts = options(&handle, live);
    let mut slots = vec![
        Slot {
            opaque: [0xA5A5_A5A5; 24]
        };
        dp
    ];
    for (r, req) in reqs.iter().enumerate() {
        if let Some(req) = req {
            let c = dpcoord::ffi::dp_batch_request::from(req);
            let status = dp_make_slot(&c, &opts, &mut slots[r]);
            assert_eq!(status, dp_status::DP_OK, "rank {r}: {}", last_error());
        }
    }
    for (r, a) in run.agreements.iter().enumerate() {
        let Some(a) = a else { continue };
        let mut res = std::mem::MaybeUninit::<dp_batch_result>::zeroed();
        dp_batch_result_init(res.as_mut_ptr());
        // SAFETY: initialised by dp_batch_result_init.
        let mut res = unsafe { res.assume_init() };
        let mut out = vec![SENTINEL; dp];
        let status = dp_decide_slots(
            slots.as_ptr(),
            dp as i32,
            r as i32,
            &opts,
            out.as_mut_ptr(),
            &mut res,
        );
        assert_eq!(status, dp_status::DP_OK, "rank {r}: {}", last_error());
        let c = (
            res.idle,
            res.eager,
            res.skip_drafts,
            [
                res.graph_mode,
                res.graph_num_tokens,
                res.graph_num_reqs,
                res.graph_uniform_token_count,
                res.graph_max_query_len,
                res.num_ubatches,
            ],
            [
                res.agreed_uniform_token_count,
                res.agreed_max_query_len,
                res.max_num_reqs,
                res.num_tokens_after_padding_self,
                res.max_num_tokens_padded,
                res.min_num_tokens_unpadded,
            ],
            (
                res.should_dp_pad,
                res.should_ubatch,
                res.has_num_tokens_after_padding,
            ),
            res.rules,
        );
        let want = (
            a.idle,
            a.eager,
            a.skip_drafts,
            [
                a.graph.mode,
                a.graph.num_tokens,
                a.graph.num_reqs,
                a.graph.uniform_token_count,
                a.graph.max_query_len,
                a.graph.num_ubatches,
            ],
            [
                a.uniform_token_count,
                a.max_query_len,
                a.max_num_reqs,
                a.num_tokens_self,
                a.max_num_tokens,
                a.min_num_tokens,
            ],
            (a.padded, a.graph.num_ubatches > 1, a.has_array),
            DP_RULES_VLLM_V2,
        );
        assert_eq!(
            c, want,
            "rank {r}: the host path's result differs from the rules'"
        );
        let array = run.arrays[r].as_deref().expect("a live rank");
        assert_eq!(
            out, array,
            "rank {r}: the host path's array differs from the rules'"
        );
    }
}

/// [`run`] through the rules alone.
pub fn run_rules(built: &Built, with_table: bool, steps: &[Option<Step>]) -> Result<Run, Error> {
    let table = with_table.then(|| built.table());
    let table = table.as_ref();
    let dp = steps.len();
    let live: Vec<u8> = steps.iter().map(|s| u8::from(s.is_some())).collect();
    let any_dead = live.contains(&0);
    let mut records = vec![DEAD; dp];
    let mut cfg = None;
    for (r, s) in steps.iter().enumerate() {
        if let Some(s) = s {
            let req = s.request(built.dbo);
            records[r] = make_v2_record(&req, table)?;
            cfg = Some(V2Config::of(&req, table));
        }
    }
    let cfg = cfg.expect("a live rank");
    let mut agreements = vec![None; dp];
    let mut arrays = vec![None; dp];
    for (r, s) in steps.iter().enumerate() {
        if s.is_none() {
            continue;
        }
        let mut out = vec![SENTINEL; dp];
        let a = decide_v2(
            &records,
            r as i32,
            any_dead.then_some(&live[..]),
            &cfg,
            table,
            Some(&mut out),
        )?;
        agreements[r] = Some(a);
        arrays[r] = Some(out);
    }
    Ok(Run {
        records,
        agreements,
        arrays,
    })
}

/// Every rank live.
pub fn all(steps: &[Step]) -> Vec<Option<Step>> {
    steps.iter().copied().map(Some).collect()
}
