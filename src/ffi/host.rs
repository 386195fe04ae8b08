//! The host path: struct initialisers, the local step and the decision from every rank's
//! records (the caller exchanges them: MPI, its own transport).

use std::mem::{size_of, MaybeUninit};

use super::{
    boundary, check_ptr, check_ptr_align, dp_batch_request, dp_batch_result, dp_status,
    init_struct_size, read_request, request_align, write_out, write_request, write_result,
    REQUEST_MIN_SIZE, RESULT_MIN_SIZE,
};
use crate::rules::{self, RankRecord, Request};

/// Fills the caller's `*req` with the defaults (padded -1, no microbatching or DP padding,
/// uniform_decode -1, CUDA-graph NONE, pad policy EXPLICIT, ubatch {false, 2, 32, 512},
/// timeout 0 = forever, step_id 0 = unchecked) and `struct_size = size`, writing only the
/// fields inside its first `min(size, sizeof)` bytes (no padding byte, nothing past `size`).
/// Call it through the header's `dp_batch_request_init(req)`, which passes the caller's
/// `sizeof(*req)`. `req` must be aligned to 4 bytes when `size` < 56 (the 0.1 layout), else 8.
///
/// Local, thread-safe. A NULL or misaligned `req`, or a `size` below 48 (the 0.1 struct),
/// writes nothing and leaves a message for `dp_last_error`.
#[no_mangle]
pub extern "C" fn dp_batch_request_init_sized(req: *mut dp_batch_request, size: usize) {
    boundary(|| {
        check_ptr_align(req.cast_const().cast(), "req", request_align(size))?;
        init_struct_size(size, REQUEST_MIN_SIZE, "dp_batch_request")?;
        // SAFETY: `req` is non-NULL and aligned (checked) and the C caller promises `size`
        // writable bytes there.
        unsafe { write_request(req, size, &Request::default()) };
        Ok(())
    });
}

/// Fills the caller's `*res` with an empty result (all zero, false, NULL) and
/// `struct_size = size`, writing only the fields inside its first `min(size, sizeof)` bytes.
/// Call it through the header's `dp_batch_result_init(res)`, which passes the caller's
/// `sizeof(*res)`. `res` must be aligned to 8 bytes.
///
/// Local, thread-safe. A NULL or misaligned `res`, or a `size` below 56 (the 0.2 struct, the
/// first with a size), writes nothing and leaves a message for `dp_last_error`.
#[no_mangle]
pub extern "C" fn dp_batch_result_init_sized(res: *mut dp_batch_result, size: usize) {
    boundary(|| {
        check_ptr(res.cast_const(), "res")?;
        let struct_size = init_struct_size(size, RESULT_MIN_SIZE, "dp_batch_result")?;
        // SAFETY: `res` is non-NULL and 8-aligned (checked) and the C caller promises `size`
        // (>= 4) writable bytes there.
        unsafe { res.cast::<u32>().write(struct_size) };
        write_result(res, size, &dp_batch_result::empty());
        Ok(())
    });
}

impl From<&Request> for dp_batch_request {
    /// The C request holding `r`, sized as this library's struct (for Rust callers of the C
    /// API: tests and benchmarks).
    fn from(r: &Request) -> Self {
        let mut c = MaybeUninit::<dp_batch_request>::zeroed();
        // SAFETY: `c` is a local of exactly `size_of::<dp_batch_request>()` writable bytes.
        unsafe { write_request(c.as_mut_ptr(), size_of::<dp_batch_request>(), r) };
        // SAFETY: zeroed (valid for every field: integers, and false for the bools), then
        // every field written from `r` (bools as `bool`).
        unsafe { c.assume_init() }
    }
}

/// The local step: validates `*req` and writes this rank's wire record to `*out`.
///
/// Local (no communication), thread-safe, allocation-free on success. `*out` is written only
/// on success. Returns `DP_OK` or `DP_ERR_INVALID_ARGUMENT` (NULL or misaligned pointer, small
/// `struct_size`, a bool byte other than 0/1, or a field out of range: the message names the
/// field and value).
#[no_mangle]
pub extern "C" fn dp_make_record(req: *const dp_batch_request, out: *mut RankRecord) -> dp_status {
    boundary(|| {
        let request = read_request(req)?;
        check_ptr(out.cast_const(), "out")?;
        write_out(out, rules::make_record(&request)?);
        Ok(())
    })
}

/// Rust callers' counterpart of the header's inline `dp_batch_request_init(req)`: records this
/// library's `sizeof(dp_batch_request)` (for tests and benchmarks written in Rust).
pub fn dp_batch_request_init(req: *mut dp_batch_request) {
    dp_batch_request_init_sized(req, size_of::<dp_batch_request>());
}

/// Rust callers' counterpart of the header's inline `dp_batch_result_init(res)`.
pub fn dp_batch_result_init(res: *mut dp_batch_result) {
    dp_batch_result_init_sized(res, size_of::<dp_batch_result>());
}
