//! The C types of the header and how a caller's struct is read and written: only
//! `min(struct_size, sizeof)` bytes, field by field, C `bool`s as bytes.

use std::mem::{align_of, offset_of, size_of};

use crate::error::{invalid, Error, ErrorKind, Result};
use crate::rules::{
    Agreement, Decision, Descriptor, Request, DP_CUDAGRAPH_NONE, DP_RULES_VLLM_V1, DP_RULES_VLLM_V2,
};

/// Opaque NCCL communicator: `ncclComm_t` is `struct ncclComm*`.
pub struct ncclComm {
    _opaque: [u8; 0],
}

/// Opaque CUDA stream: `cudaStream_t` (and `CUstream`) is `struct CUstream_st*`.
pub struct CUstream_st {
    _opaque: [u8; 0],
}

/// Status of every dpcoord call. Numbered explicitly; a number never changes meaning.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dp_status {
    /// Success.
    DP_OK = 0,
    /// An argument is NULL, misaligned, out of range, or a `struct_size` is too small; see
    /// `dp_last_error`.
    DP_ERR_INVALID_ARGUMENT = 1,
    /// Ranks passed records that cannot be combined (EXPLICIT pad flags or step ids differ);
    /// every rank gets it.
    DP_ERR_INCONSISTENT_RANKS = 2,
    /// A CUDA driver call failed.
    DP_ERR_CUDA = 3,
    /// An NCCL call failed or the communicator holds an asynchronous error.
    DP_ERR_NCCL = 4,
    /// The exchange did not finish within `timeout_ms`.
    DP_ERR_TIMEOUT = 5,
    /// The CUDA driver or NCCL could not be loaded, or lacks a needed function.
    DP_ERR_LIBRARY_UNAVAILABLE = 6,
    /// Another call is in progress on the same coordinator or communicator.
    DP_ERR_BUSY = 7,
    /// A bug in dpcoord (for instance a caught panic); the message says what happened.
    DP_ERR_INTERNAL = 8,
    /// The wait was ended by `dp_coordinator_cancel` or `dp_cancel`.
    DP_ERR_CANCELLED = 9,
    /// A host-group peer process exited or closed the group.
    DP_ERR_PEER_EXITED = 10,
    /// A rank's slot failed its checksum (0.3): the transport delivered damaged bytes, or
    /// something wrote into them; the message names the rank. Its own status, not
    /// `DP_ERR_INCONSISTENT_RANKS` (ranks that disagree on a setting: fix the deployment) nor a
    /// library's error: the transport or the memory under it is faulty, so nothing of the
    /// exchange was used and the caller should rebuild it.
    DP_ERR_CORRUPT = 11,
}

impl From<ErrorKind> for dp_status {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::InvalidArgument => dp_status::DP_ERR_INVALID_ARGUMENT,
            ErrorKind::InconsistentRanks => dp_status::DP_ERR_INCONSISTENT_RANKS,
            ErrorKind::Cuda => dp_status::DP_ERR_CUDA,
            ErrorKind::Nccl => dp_status::DP_ERR_NCCL,
            ErrorKind::Timeout => dp_status::DP_ERR_TIMEOUT,
            ErrorKind::LibraryUnavailable => dp_status::DP_ERR_LIBRARY_UNAVAILABLE,
            ErrorKind::Busy => dp_status::DP_ERR_BUSY,
            ErrorKind::Internal => dp_status::DP_ERR_INTERNAL,
            ErrorKind::Cancelled => dp_status::DP_ERR_CANCELLED,
            ErrorKind::PeerExited => dp_status::DP_ERR_PEER_EXITED,
            ErrorKind::Corrupt => dp_status::DP_ERR_CORRUPT,
        }
    }
}

/// A status code as it crosses from C: read as an integer, since C may pass any value.
pub type dp_status_code = u32;

/// Microbatching configuration (vLLM's `enable_dbo` and thresholds).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dp_ubatch_config {
    /// Microbatching is configured; when false the other fields are ignored. A byte: 0 or 1.
    pub enabled: bool,
    /// Microbatches per step; >= 2 when enabled (default 2).
    pub num_ubatches: i32,
    /// Minimum tokens of a uniform-decode batch to attempt microbatching; >= num_ubatches
    /// when enabled (default 32).
    pub decode_token_threshold: i32,
    /// Minimum tokens of a batch with prefill to attempt microbatching; >= num_ubatches when
    /// enabled (default 512).
    pub prefill_token_threshold: i32,
}

/// One rank's request for this step. Initialise with `dp_batch_request_init`, then set fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dp_batch_request {
    /// `sizeof(dp_batch_request)` as the caller compiled it (set by `dp_batch_request_init`);
    /// the library reads only `min(struct_size, sizeof)` bytes, so the struct can grow.
    pub struct_size: u32,
    /// Tokens this rank schedules this step; >= 0.
    pub num_tokens_unpadded: i32,
    /// Tokens incl. non-DP padding (CUDA-graph bucket, TP); -1 = same as unpadded; else >= unpadded.
    pub num_tokens_padded: i32,
    /// The caller wants microbatching considered. A byte: 0 or 1.
    pub allow_microbatching: bool,
    /// The caller wants every rank padded to the same count (EXPLICIT pad policy). A byte: 0 or 1.
    pub allow_dp_padding: bool,
    /// 1 = only single-token decodes, 0 = contains prefill, -1 = unknown (only without microbatching).
    pub uniform_decode: i32,
    /// 0 NONE, 1 PIECEWISE, 2 FULL.
    pub cudagraph_mode: i32,
    /// 0 EXPLICIT, 1 WHEN_CUDAGRAPH; every rank must pass the same value.
    pub pad_policy: i32,
    /// Microbatching configuration; every rank must pass the same value.
    pub ubatch: dp_ubatch_config,
    /// 0 = wait forever; > 0 = no blocking call takes longer than this many ms (+100 ms).
    pub timeout_ms: i32,
    /// The caller's step counter (0.2); 0 = unchecked, else >= 0 and equal on every rank.
    pub step_id: i64,
    /// The rule set (0.3): `DP_RULES_VLLM_V1` (default) or `DP_RULES_VLLM_V2`; every rank must
    /// pass the same value.
    pub rules: i32,
    /// For a draft (speculator) step, the `step_id` of the step it belongs to (0.3); 0 = none,
    /// else >= 0 and equal on every rank.
    pub parent_step_id: i64,
    /// V2 (0.3): requests this rank schedules; >= 0 (default 0).
    pub num_reqs: i32,
    /// V2 (0.3): the per-request query length when every request schedules the same number of
    /// tokens (a uniform decode, 1 + the speculative tokens); >= 1, 0 = none (default).
    pub uniform_token_count: i32,
    /// V2 (0.3): the largest query length, when the batch may use varlen decode graphs; >= 1,
    /// -1 = none (default).
    pub max_query_len: i32,
    /// V2 (0.3): active LoRA adapters on this rank (local: selects the graph family, never
    /// exchanged); >= 0 (default 0).
    pub num_active_loras: i32,
    /// V2 (0.3): none of this rank's requests can use this step's drafts. A byte: 0 or 1.
    pub allow_skip_drafts: bool,
    /// V2 (0.3): this rank must run eager (its own graph is NONE). A byte: 0 or 1.
    pub need_eager: bool,
}

/// The smallest `struct_size` accepted: `sizeof(dp_batch_request)` of version 0.1 (no `step_id`).
pub(crate) const REQUEST_MIN_SIZE: usize = offset_of!(dp_batch_request, step_id);

/// The decision every rank shares for this step. Initialise with `dp_batch_result_init`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dp_batch_result {
    /// `sizeof(dp_batch_result)` as the caller compiled it (set by `dp_batch_result_init`, 0.2);
    /// the library writes only `min(struct_size, sizeof)` bytes.
    pub struct_size: u32,
    /// Every rank splits this step into microbatches.
    pub should_ubatch: bool,
    /// Every rank is padded to `max_num_tokens_padded`.
    pub should_dp_pad: bool,
    /// `num_tokens_after_padding` holds `dp_size` entries (false when dp_size == 1 or no array).
    pub has_num_tokens_after_padding: bool,
    /// The minimum CUDA-graph mode across ranks: the mode every rank uses.
    pub synced_cudagraph_mode: i32,
    /// This rank.
    pub dp_rank: i32,
    /// Number of ranks.
    pub dp_size: i32,
    /// This rank's tokens after padding (own padded count when dp_size == 1).
    pub num_tokens_after_padding_self: i32,
    /// Maximum padded token count across ranks.
    pub max_num_tokens_padded: i32,
    /// Minimum unpadded token count across ranks.
    pub min_num_tokens_unpadded: i32,
    /// Host array of `dp_size` tokens-after-padding, or NULL (see `has_num_tokens_after_padding`).
    pub num_tokens_after_padding: *const i32,
    /// Device array of `dp_size` entries written in stream order; NULL from the host paths.
    pub num_tokens_after_padding_device: *const i32,
    /// The agreed step id (0.2): every live rank's `step_id`, 0 when unchecked.
    pub step_id: i64,
    /// The live rank that arrived last at this exchange (0.3; -1 when nothing was exchanged).
    pub last_rank: i32,
    /// Latest minus earliest arrival over the live ranks, in ns of `CLOCK_MONOTONIC` (0.3):
    /// exact for ranks of one host; across hosts it also holds the clocks' offsets.
    pub arrival_skew_ns: i64,
    /// How long this call waited for the other ranks, in ns (0.3; 0 on the host path).
    pub wait_ns: i64,
    /// V2 (0.3): no live rank has work this step (every `num_tokens` is 0): run nothing; there
    /// is no array.
    pub idle: bool,
    /// Decided with no exchange, as if every rank had sent this rank's values (0.3,
    /// `dp_decide_local`): not the same decision as the other ranks'.
    pub local: bool,
    /// V2 (0.3): the ranks agreed to run eager (a reuse of this agreement runs eager too).
    pub eager: bool,
    /// V2 (0.3): every live rank allows skipping this step's drafts.
    pub skip_drafts: bool,
    /// The graph to run (0.3): 0 NONE, 1 PIECEWISE, 2 FULL.
    pub graph_mode: i32,
    /// The graph's tokens (0.3): every rank runs this many, except when eager (this rank's own
    /// tokens).
    pub graph_num_tokens: i32,
    /// The graph's requests (0.3), -1 = no request padding (PIECEWISE); per rank (this rank's
    /// own) when `graph_mode` is NONE.
    pub graph_num_reqs: i32,
    /// The graph's uniform query length (0.3), 0 = none.
    pub graph_uniform_token_count: i32,
    /// The graph's query-length bound (0.3), -1 = none.
    pub graph_max_query_len: i32,
    /// Microbatches this step runs (0.3): 1 = none.
    pub num_ubatches: i32,
    /// V2 (0.3): the uniform query length every live rank sent; 0 = none, or they differ.
    pub agreed_uniform_token_count: i32,
    /// V2 (0.3): the largest query-length bound when every live rank sent one; -1 = none.
    pub agreed_max_query_len: i32,
    /// V2 (0.3): the largest request count of the live ranks (before graph padding).
    pub max_num_reqs: i32,
    /// The rule set this result was decided under (0.3): `DP_RULES_VLLM_V1` or
    /// `DP_RULES_VLLM_V2` (the reuse functions take only a V2 result).
    pub rules: i32,
}

/// The smallest `struct_size` accepted: the whole 0.2 struct (the first version with a size).
pub(crate) const RESULT_MIN_SIZE: usize = offset_of!(dp_batch_result, last_rank);

impl dp_batch_result {
    /// The C result of a V1 decision (arrays NULL; the caller sets them when it has them, and
    /// the straggler report when there was an exchange). The 0.3 descriptor fields hold the V1
    /// view: the synced mode, this rank's tokens after padding, no request count, and
    /// `num_ubatches`; the V2 agreement fields hold their "none" values.
    pub(crate) fn from_decision(d: &Decision, dp_rank: i32, dp_size: i32, step_id: i64) -> Self {
        Self {
            struct_size: size_of::<dp_batch_result>() as u32,
            should_ubatch: d.should_ubatch,
            should_dp_pad: d.should_dp_pad,
            has_num_tokens_after_padding: false,
            synced_cudagraph_mode: d.synced_cudagraph_mode,
            dp_rank,
            dp_size,
            num_tokens_after_padding_self: d.num_tokens_after_padding_self,
            max_num_tokens_padded: d.max_num_tokens_padded,
            min_num_tokens_unpadded: d.min_num_tokens_unpadded,
            num_tokens_after_padding: std::ptr::null(),
            num_tokens_after_padding_device: std::ptr::null(),
            step_id,
            last_rank: -1,
            arrival_skew_ns: 0,
            wait_ns: 0,
            idle: false,
            local: false,
            eager: d.synced_cudagraph_mode == DP_CUDAGRAPH_NONE,
            skip_drafts: false,
            graph_mode: d.synced_cudagraph_mode,
            graph_num_tokens: d.num_tokens_after_padding_self,
            graph_num_reqs: -1,
            graph_uniform_token_count: 0,
            graph_max_query_len: -1,
            num_ubatches: d.num_ubatches,
            agreed_uniform_token_count: 0,
            agreed_max_query_len: -1,
            max_num_reqs: 0,
            rules: DP_RULES_VLLM_V1,
        }
    }

    /// The C result of a V2 agreement (arrays NULL; the caller sets them when it has them, and
    /// the straggler report when there was an exchange). The 0.1 fields hold the V2 view:
    /// microbatching when the graph runs several microbatches, padding when every rank runs
    /// the graph's tokens, the graph's mode, this rank's tokens, the largest and smallest live
    /// token counts.
    pub(crate) fn from_agreement(a: &Agreement, dp_rank: i32, dp_size: i32, step_id: i64) -> Self {
        Self {
            struct_size: size_of::<dp_batch_result>() as u32,
            should_ubatch: a.graph.num_ubatches > 1,
            should_dp_pad: a.padded,
            has_num_tokens_after_padding: false,
            synced_cudagraph_mode: a.graph.mode,
            dp_rank,
            dp_size,
            num_tokens_after_padding_self: a.num_tokens_self,
            max_num_tokens_padded: a.max_num_tokens,
            min_num_tokens_unpadded: a.min_num_tokens,
            num_tokens_after_padding: std::ptr::null(),
            num_tokens_after_padding_device: std::ptr::null(),
            step_id,
            last_rank: -1,
            arrival_skew_ns: 0,
            wait_ns: 0,
            idle: a.idle,
            local: false,
            eager: a.eager,
            skip_drafts: a.skip_drafts,
            graph_mode: a.graph.mode,
            graph_num_tokens: a.graph.num_tokens,
            graph_num_reqs: a.graph.num_reqs,
            graph_uniform_token_count: a.graph.uniform_token_count,
            graph_max_query_len: a.graph.max_query_len,
            num_ubatches: a.graph.num_ubatches,
            agreed_uniform_token_count: a.uniform_token_count,
            agreed_max_query_len: a.max_query_len,
            max_num_reqs: a.max_num_reqs,
            rules: DP_RULES_VLLM_V2,
        }
    }

    /// The agreement a V2 result holds (the inverse of [`dp_batch_result::from_agreement`];
    /// the descriptor's LoRA count, which the result does not carry, is 0).
    pub(crate) fn agreement(&self) -> Agreement {
        Agreement {
            idle: self.idle,
            graph: Descriptor {
                mode: self.graph_mode,
                num_tokens: self.graph_num_tokens,
                num_reqs: self.graph_num_reqs,
                uniform_token_count: self.graph_uniform_token_count,
                max_query_len: self.graph_max_query_len,
                num_ubatches: self.num_ubatches,
                num_active_loras: 0,
            },
            eager: self.eager,
            uniform_token_count: self.agreed_uniform_token_count,
            max_query_len: self.agreed_max_query_len,
            max_num_reqs: self.max_num_reqs,
            skip_drafts: self.skip_drafts,
            has_array: self.has_num_tokens_after_padding,
            padded: self.should_dp_pad,
            num_tokens_self: self.num_tokens_after_padding_self,
            max_num_tokens: self.max_num_tokens_padded,
            min_num_tokens: self.min_num_tokens_unpadded,
        }
    }

    /// The result of `dp_batch_result_init`: everything zero, false or NULL.
    pub(crate) fn empty() -> Self {
        Self {
            struct_size: size_of::<dp_batch_result>() as u32,
            should_ubatch: false,
            should_dp_pad: false,
            has_num_tokens_after_padding: false,
            synced_cudagraph_mode: 0,
            dp_rank: 0,
            dp_size: 0,
            num_tokens_after_padding_self: 0,
            max_num_tokens_padded: 0,
            min_num_tokens_unpadded: 0,
            num_tokens_after_padding: std::ptr::null(),
            num_tokens_after_padding_device: std::ptr::null(),
            step_id: 0,
            last_rank: 0,
            arrival_skew_ns: 0,
            wait_ns: 0,
            idle: false,
            local: false,
            eager: false,
            skip_drafts: false,
            graph_mode: 0,
            graph_num_tokens: 0,
            graph_num_reqs: 0,
            graph_uniform_token_count: 0,
            graph_max_query_len: 0,
            num_ubatches: 0,
            agreed_uniform_token_count: 0,
            agreed_max_query_len: 0,
            max_num_reqs: 0,
            rules: 0,
        }
    }
}

/// Checks a pointer argument: non-NULL and aligned for `T`.
pub(crate) fn check_ptr<T>(ptr: *const T, name: &str) -> Result<()> {
    check_ptr_align(ptr.cast(), name, align_of::<T>())
}

/// Checks a pointer argument: non-NULL and aligned to `align` bytes.
pub(crate) fn check_ptr_align(ptr: *const u8, name: &str, align: usize) -> Result<()> {
    if ptr.is_null() {
        return Err(invalid!("{name} is NULL"));
    }
    if (ptr as usize) % align != 0 {
        return Err(invalid!(
            "{name} = {ptr:p} is not aligned to {align} bytes, as its type requires"
        ));
    }
    Ok(())
}

/// Reads the leading `uint32_t struct_size` of a caller's struct (checked first: non-NULL,
/// 4-aligned; nothing else of the struct is touched), and refuses a size below `min`.
pub(crate) fn read_struct_size(
    ptr: *const u8,
    name: &str,
    type_name: &str,
    min: usize,
) -> Result<usize> {
    check_ptr_align(ptr, name, align_of::<u32>())?;
    // SAFETY: non-NULL and 4-aligned (checked); every dpcoord struct starts with a u32
    // struct_size, which the C caller promises is readable.
    let size = unsafe { ptr.cast::<u32>().read() } as usize;
    if size < min {
        return Err(invalid!(
            "{name}->struct_size = {size} is smaller than {min}, the size of the first version of \
             {type_name}; call {type_name}_init first"
        ));
    }
    Ok(size)
}

/// Whether a field of `width` bytes at `offset` lies inside both the caller's first `size`
/// bytes and this library's struct `S`.
pub(crate) fn inside<S>(offset: usize, width: usize, size: usize) -> bool {
    offset + width <= size.min(size_of::<S>())
}

/// Reads the field at `offset` of a caller's struct `S` whose first `size` bytes are
/// readable, or `None` when the caller's (older) struct ends before the field does. The
/// field's type is the one `_field` projects from `S` (`|s: &S| s.field`, never called), so a
/// read can never take the wrong width.
pub(crate) fn read_field<S, T: Copy>(
    _field: impl Fn(&S) -> T,
    base: *const u8,
    size: usize,
    offset: usize,
) -> Option<T> {
    if !inside::<S>(offset, size_of::<T>(), size) {
        return None;
    }
    // SAFETY: the field lies within the caller's first `size` bytes (checked), which the C
    // caller promises are readable; read unaligned because only `struct_size`'s alignment is
    // required of an older struct.
    Some(unsafe { base.add(offset).cast::<T>().read_unaligned() })
}

/// Writes `value` into the field at `offset` of a caller's struct `S` whose first `size`
/// bytes are writable, and nothing when the caller's (older) struct ends before the field
/// does; the field's type is the one `_field` projects from `S`, as in [`read_field`].
///
/// # Safety
/// `base` must be valid for `size` writable bytes.
pub(crate) unsafe fn write_field<S, T: Copy>(
    _field: impl Fn(&S) -> T,
    base: *mut u8,
    size: usize,
    offset: usize,
    value: T,
) {
    if inside::<S>(offset, size_of::<T>(), size) {
        // SAFETY: the field lies within the caller's first `size` bytes (checked), which the
        // caller of this function promises are writable; unaligned, as in `read_field`.
        unsafe { base.add(offset).cast::<T>().write_unaligned(value) }
    }
}

/// A C `bool` read as a byte (`None`: past the caller's struct): 0 or 1, anything else is an
/// error naming the field and the byte.
pub(crate) fn bool_from_byte(byte: Option<u8>, name: &str) -> Result<Option<bool>> {
    match byte {
        None => Ok(None),
        Some(0) => Ok(Some(false)),
        Some(1) => Ok(Some(true)),
        Some(byte) => Err(invalid!(
            "{name} holds the byte {byte}; a C bool must be 0 (false) or 1 (true)"
        )),
    }
}

/// Invokes `$visit!` with every field of `dp_batch_request` after `struct_size`, in layout
/// order, each tagged `int` or `flag` (a C `bool`): the one list of the request's fields that
/// the reader ([`read_request`]) and the writer ([`write_request`]) walk. The fields of
/// `rules::Request` carry the same names (and the compiler checks the same types).
macro_rules! request_fields {
    ($visit:ident) => {
        $visit! {
            num_tokens_unpadded: int,
            num_tokens_padded: int,
            allow_microbatching: flag,
            allow_dp_padding: flag,
            uniform_decode: int,
            cudagraph_mode: int,
            pad_policy: int,
            ubatch.enabled: flag,
            ubatch.num_ubatches: int,
            ubatch.decode_token_threshold: int,
            ubatch.prefill_token_threshold: int,
            timeout_ms: int,
            step_id: int,
            rules: int,
            parent_step_id: int,
            num_reqs: int,
            uniform_token_count: int,
            max_query_len: int,
            num_active_loras: int,
            allow_skip_drafts: flag,
            need_eager: flag,
        }
    };
}

/// The alignment of a caller's request of `size` bytes: 8 once it holds the 0.2 `step_id`
/// (an `int64_t`), 4 for the 0.1 layout (all 4-byte fields).
pub(crate) fn request_align(size: usize) -> usize {
    if size >= offset_of!(dp_batch_request, step_id) + size_of::<i64>() {
        align_of::<dp_batch_request>()
    } else {
        align_of::<u32>()
    }
}

/// A caller's request as far as it could be read: its fields (the defaults of
/// `dp_batch_request_init` where unread or unreadable) and the first thing wrong with them.
pub(crate) struct ReadRequest {
    /// The fields as read.
    pub(crate) request: Request,
    /// The first bad bool byte or out-of-range value, named (None: the request is valid).
    pub(crate) invalid: Option<Error>,
}

/// Reads a `dp_batch_request`: `struct_size` first, then only the fields inside it (the rest
/// takes the defaults of `dp_batch_request_init`), bools as bytes; then validates it. Fails
/// only when the struct itself cannot be read (NULL, misaligned, `struct_size`); bad contents
/// come back in `invalid`, so that the GPU path can still join the exchange with the
/// invalid-request marker. Never forms a reference to the caller's struct and never reads a
/// byte past `struct_size`.
pub(crate) fn read_request_fields(req: *const dp_batch_request) -> Result<ReadRequest> {
    let base = req.cast::<u8>();
    let size = read_struct_size(base, "req", "dp_batch_request", REQUEST_MIN_SIZE)?;
    check_ptr_align(base, "req", request_align(size))?;
    let mut request = Request::default();
    let mut invalid: Option<Error> = None;
    macro_rules! read {
        ($($($field:ident).+ : $kind:ident,)+) => {$(
            let offset = offset_of!(dp_batch_request, $($field).+);
            read!(@$kind offset, request.$($field).+, $($field).+);
        )+};
        (@int $offset:ident, $dst:expr, $($field:ident).+) => {
            if let Some(v) = read_field(|r: &dp_batch_request| r.$($field).+, base, size, $offset) {
                $dst = v;
            }
        };
        (@flag $offset:ident, $dst:expr, $($field:ident).+) => {
            let byte = read_field(|r: &dp_batch_request| u8::from(r.$($field).+), base, size, $offset);
            let name = concat!("req->", stringify!($($field).+));
            match bool_from_byte(byte, name) {
                Ok(Some(v)) => $dst = v,
                Ok(None) => {}
                Err(e) => {
                    invalid.get_or_insert(e);
                }
            }
        };
    }
    request_fields!(read);
    if invalid.is_none() {
        invalid = request
            .validate()
            .err()
            .map(|e| Error::new(e.kind, format!("req->{}", e.message)));
    }
    Ok(ReadRequest { request, invalid })
}

/// Reads and validates a `dp_batch_request` ([`read_request_fields`]): any fault is an error.
pub(crate) fn read_request(req: *const dp_batch_request) -> Result<Request> {
    let read = read_request_fields(req)?;
    match read.invalid {
        Some(e) => Err(e),
        None => Ok(read.request),
    }
}

/// Writes `r` into a caller's request whose first `size` bytes are writable: `struct_size =
/// size` (saturated to `u32`), then every field inside `min(size, sizeof)`; no other byte.
///
/// # Safety
/// `req` must be valid for `size` writable bytes.
pub(crate) unsafe fn write_request(req: *mut dp_batch_request, size: usize, r: &Request) {
    let base = req.cast::<u8>();
    let struct_size = u32::try_from(size).unwrap_or(u32::MAX);
    macro_rules! write {
        ($($($field:ident).+ : $kind:ident,)+) => {
            // SAFETY: the caller promises `size` writable bytes at `req`; `write_field`
            // writes only inside them.
            unsafe {
                write_field(|r: &dp_batch_request| r.struct_size, base, size, 0, struct_size);
                $(write_field(
                    |c: &dp_batch_request| c.$($field).+,
                    base,
                    size,
                    offset_of!(dp_batch_request, $($field).+),
                    r.$($field).+,
                );)+
            }
        };
    }
    request_fields!(write);
}

/// Checks a result pointer (non-NULL, aligned, `struct_size` readable and large enough) and
/// returns the caller's `struct_size`, before any work is done.
pub(crate) fn check_result(res: *mut dp_batch_result) -> Result<usize> {
    check_ptr(res.cast_const(), "res")?;
    read_struct_size(
        res.cast_const().cast(),
        "res",
        "dp_batch_result",
        RESULT_MIN_SIZE,
    )
}

/// Invokes `$visit!` with every field of `dp_batch_result` after `struct_size`, each tagged
/// `flag` (a C `bool`) or `val`: the one list the writer ([`write_result`]) and the reader
/// ([`read_result`]) walk.
macro_rules! result_fields {
    ($visit:ident) => {
        $visit! {
            should_ubatch: flag,
            should_dp_pad: flag,
            has_num_tokens_after_padding: flag,
            synced_cudagraph_mode: val,
            dp_rank: val,
            dp_size: val,
            num_tokens_after_padding_self: val,
            max_num_tokens_padded: val,
            min_num_tokens_unpadded: val,
            num_tokens_after_padding: val,
            num_tokens_after_padding_device: val,
            step_id: val,
            last_rank: val,
            arrival_skew_ns: val,
            wait_ns: val,
            idle: flag,
            local: flag,
            eager: flag,
            skip_drafts: flag,
            graph_mode: val,
            graph_num_tokens: val,
            graph_num_reqs: val,
            graph_uniform_token_count: val,
            graph_max_query_len: val,
            num_ubatches: val,
            agreed_uniform_token_count: val,
            agreed_max_query_len: val,
            max_num_reqs: val,
            rules: val,
        }
    };
}

/// Writes `value` into the caller's result, field by field and only the fields inside its
/// first `size` bytes (from [`check_result`]); `struct_size` is left as the caller set it.
pub(crate) fn write_result(res: *mut dp_batch_result, size: usize, value: &dp_batch_result) {
    let base = res.cast::<u8>();
    macro_rules! put {
        ($($field:ident: $kind:ident,)+) => {$(
            // SAFETY: `res` was checked by `check_result` (non-NULL, aligned, struct_size
            // readable): the caller promises `size` writable bytes there.
            unsafe {
                write_field(
                    |r: &dp_batch_result| r.$field,
                    base,
                    size,
                    offset_of!(dp_batch_result, $field),
                    value.$field,
                )
            };
        )+};
    }
    result_fields!(put);
}

/// Reads a caller's result (a prior step's, for the reuse functions): `struct_size` first,
/// then only the fields inside it (the rest as `dp_batch_result_init` leaves them), bools as
/// bytes (`name` is the parameter's name in errors).
pub(crate) fn read_result(res: *const dp_batch_result, name: &str) -> Result<dp_batch_result> {
    let base = res.cast::<u8>();
    let size = read_struct_size(base, name, "dp_batch_result", RESULT_MIN_SIZE)?;
    check_ptr(res, name)?;
    let mut out = dp_batch_result::empty();
    macro_rules! get {
        ($($field:ident: $kind:ident,)+) => {$(
            get!(@$kind $field);
        )+};
        (@val $field:ident) => {
            let offset = offset_of!(dp_batch_result, $field);
            if let Some(v) = read_field(|r: &dp_batch_result| r.$field, base, size, offset) {
                out.$field = v;
            }
        };
        (@flag $field:ident) => {
            let offset = offset_of!(dp_batch_result, $field);
            match read_field(|r: &dp_batch_result| u8::from(r.$field), base, size, offset) {
                None => {}
                Some(0) => out.$field = false,
                Some(1) => out.$field = true,
                Some(byte) => {
                    return Err(invalid!(
                        "{name}->{} holds the byte {byte}; a C bool must be 0 (false) or 1 (true)",
                        stringify!($field)
                    ))
                }
            }
        };
    }
    result_fields!(get);
    Ok(out)
}
