//! The byte-level promises of the C ABI (docs/ARCHITECTURE.md, "C API"), tested through raw
//! memory as a C caller lays it out:
//! - structs grow: a caller built with the 0.1 request (48 bytes) and one with structs larger
//!   than this library's both work, and the library reads and writes only
//!   `min(struct_size, sizeof)` bytes (guard pages: the struct flush against a `PROT_NONE`
//!   page, so one byte too many faults);
//! - C bools are bytes: only 0 and 1 are accepted, anything else is an error naming the field
//!   and the byte;
//! - every pointer is checked for its type's alignment: an error naming the argument, never an
//!   abort.
//!
//! The guard-page tests run in a child process each (`in_child_process`), so a fault fails
//! that test and names the signal.

mod ffi_common;

use std::mem::{offset_of, size_of};
use std::ptr::{null, null_mut};

use dpcoord::ffi::*;
use dpcoord::rules::RankRecord;
use ffi_common::{
    assert_fails, fake_comm, in_child_process, last_error, sentinel_result, SENTINEL,
    SENTINEL_RECORD,
};

const INVALID: dp_status = dp_status::DP_ERR_INVALID_ARGUMENT;
/// The byte every guarded page starts filled with.
const FILL: u8 = 0xA5;
/// The 0.1 request: everything before `step_id`.
const REQUEST_0_1: usize = offset_of!(dp_batch_request, step_id);
const REQUEST_0_2: usize = offset_of!(dp_batch_request, rules);
const RESULT_0_2: usize = offset_of!(dp_batch_result, last_rank);
const REQUEST: usize = size_of::<dp_batch_request>();
const RESULT: usize = size_of::<dp_batch_result>();
/// A newer caller's structs: 16 bytes of fields this library does not know.
const NEWER: usize = 16;

/// Reads a `T` at `offset` bytes from `base` (a field of a struct laid out in raw memory).
fn get<T: Copy>(base: *const u8, offset: usize) -> T {
    // SAFETY: every caller passes an offset inside the memory it set up.
    unsafe { base.add(offset).cast::<T>().read_unaligned() }
}

/// Writes a `T` at `offset` bytes from `base`.
fn put<T: Copy>(base: *mut u8, offset: usize, value: T) {
    // SAFETY: every caller passes an offset inside the memory it set up.
    unsafe { base.add(offset).cast::<T>().write_unaligned(value) }
}

/// Offsets of the request fields the tests set by hand.
mod req {
    use super::*;
    pub const STRUCT_SIZE: usize = offset_of!(dp_batch_request, struct_size);
    pub const UNPADDED: usize = offset_of!(dp_batch_request, num_tokens_unpadded);
    pub const PADDED: usize = offset_of!(dp_batch_request, num_tokens_padded);
    pub const ALLOW_MICROBATCHING: usize = offset_of!(dp_batch_request, allow_microbatching);
    pub const ALLOW_DP_PADDING: usize = offset_of!(dp_batch_request, allow_dp_padding);
    pub const UNIFORM_DECODE: usize = offset_of!(dp_batch_request, uniform_decode);
    pub const CUDAGRAPH_MODE: usize = offset_of!(dp_batch_request, cudagraph_mode);
    pub const UBATCH_ENABLED: usize =
        offset_of!(dp_batch_request, ubatch) + offset_of!(dp_ubatch_config, enabled);
    pub const NUM_UBATCHES: usize =
        offset_of!(dp_batch_request, ubatch) + offset_of!(dp_ubatch_config, num_ubatches);
    pub const TIMEOUT_MS: usize = offset_of!(dp_batch_request, timeout_ms);
    pub const STEP_ID: usize = offset_of!(dp_batch_request, step_id);
}

/// Makes the initialised request at `p` one that attempts microbatching and DP padding
/// (every bool field 1 and each of them decisive): 600 prefill tokens, padded to 640, FULL.
fn set_ubatch_request(p: *mut u8) {
    put(p, req::UNPADDED, 600i32);
    put(p, req::PADDED, 640i32);
    put(p, req::ALLOW_MICROBATCHING, 1u8);
    put(p, req::ALLOW_DP_PADDING, 1u8);
    put(p, req::UNIFORM_DECODE, 0i32);
    put(p, req::CUDAGRAPH_MODE, DP_CUDAGRAPH_FULL);
    put(p, req::UBATCH_ENABLED, 1u8);
}

/// The record of `set_ubatch_request`.
const UBATCH_RECORD: RankRecord = RankRecord {
    num_tokens_unpadded: 600,
    num_tokens_padded: 640,
    should_attempt_ubatch: 1,
    should_attempt_dp_pad: 1,
    cudagraph_mode: DP_CUDAGRAPH_FULL,
};

fn make_record_at(p: *const u8) -> (dp_status, RankRecord) {
    let mut out = SENTINEL_RECORD;
    let status = dp_make_record(p.cast(), &mut out);
    (status, out)
}

/// Checks the defaults `dp_batch_request_init` writes, as far as a `size`-byte request holds.
fn assert_request_defaults(p: *const u8, size: usize) {
    assert_eq!(get::<u32>(p, req::STRUCT_SIZE) as usize, size);
    assert_eq!(get::<i32>(p, req::UNPADDED), 0);
    assert_eq!(get::<i32>(p, req::PADDED), -1);
    assert_eq!(get::<u8>(p, req::ALLOW_MICROBATCHING), 0);
    assert_eq!(get::<u8>(p, req::ALLOW_DP_PADDING), 0);
    assert_eq!(get::<i32>(p, req::UNIFORM_DECODE), -1);
    assert_eq!(get::<u8>(p, req::UBATCH_ENABLED), 0);
    assert_eq!(get::<i32>(p, req::NUM_UBATCHES), 2);
    assert_eq!(get::<i32>(p, req::TIMEOUT_MS), 0);
    if size >= REQUEST {
        assert_eq!(get::<i64>(p, req::STEP_ID), 0);
    }
}

/// Two pages mapped read-write, the second then made `PROT_NONE`: memory whose end is flush
/// against a page that faults on any access. The first page starts filled with [`FILL`].
struct GuardPage {
    map: *mut u8,
    page: usize,
}

impl GuardPage {
    fn new() -> Self {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let map = unsafe {
            libc::mmap(
                null_mut(),
                2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED, "mmap");
        let map = map.cast::<u8>();
        // SAFETY: the second page of the mapping made above.
        let rc = unsafe { libc::mprotect(map.add(page).cast(), page, libc::PROT_NONE) };
        assert_eq!(rc, 0, "mprotect");
        // SAFETY: the first page is mapped read-write.
        unsafe { map.write_bytes(FILL, page) };
        Self { map, page }
    }

    /// The last `n` bytes before the guard page (page-aligned minus `n`: 8-aligned when `n`
    /// is a multiple of 8).
    fn tail(&self, n: usize) -> *mut u8 {
        assert!(n <= self.page);
        // SAFETY: inside the first page.
        unsafe { self.map.add(self.page - n) }
    }

    /// The last `n` bytes before the guard page, as a slice.
    fn tail_bytes(&self, n: usize) -> &[u8] {
        // SAFETY: inside the first page, which lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.tail(n), n) }
    }
}

impl Drop for GuardPage {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.map.cast(), 2 * self.page) };
    }
}

/// An 8-byte-aligned scratch buffer, for structs placed at chosen offsets.
#[repr(C, align(16))]
struct Scratch([u8; 512]);

impl Scratch {
    fn new() -> Box<Self> {
        Box::new(Scratch([FILL; 512]))
    }
    fn at(&mut self, offset: usize) -> *mut u8 {
        self.0[offset..].as_mut_ptr()
    }
}

// ---------------------------------------------------------------------------------------
// Struct growth and guard pages
// ---------------------------------------------------------------------------------------

#[test]
fn a_0_1_request_flush_against_a_guard_page() {
    in_child_process("a_0_1_request_flush_against_a_guard_page", || {
        let guard = GuardPage::new();
        let p = guard.tail(REQUEST_0_1);
        // What the 0.1-sized caller's dp_batch_request_init(&req) passes: sizeof = 48.
        dp_batch_request_init_sized(p.cast(), REQUEST_0_1);
        assert_request_defaults(p, REQUEST_0_1);
        assert_eq!(make_record_at(p).0, dp_status::DP_OK, "{}", last_error());
        set_ubatch_request(p);
        assert_eq!(make_record_at(p), (dp_status::DP_OK, UBATCH_RECORD));
        // The GPU path reads it the same way (no NCCL in tests, .cargo/config.toml: no marker
        // is sent, the field is named).
        put(p, req::CUDAGRAPH_MODE, 7i32);
        let mut res = sentinel_result();
        assert_fails(
            dp_coordinate_batch(fake_comm(), null_mut(), p.cast(), &mut res),
            INVALID,
            &["req->cudagraph_mode = 7"],
        );
    });
}

#[test]
fn a_0_1_request_gets_step_id_0() {
    // The bytes after a 48-byte request hold a step id that would be refused if read.
    let mut scratch = Scratch::new();
    let p = scratch.at(0);
    dp_batch_request_init_sized(p.cast(), REQUEST_0_1);
    assert_eq!(get::<u64>(p, req::STEP_ID), u64::from_ne_bytes([FILL; 8]));
    put(p, req::STEP_ID, -1i64);
    set_ubatch_request(p);
    assert_eq!(make_record_at(p), (dp_status::DP_OK, UBATCH_RECORD));
    // The same bytes as a 0.2 request: the step id is read, and refused.
    put(p, req::STRUCT_SIZE, REQUEST_0_2 as u32);
    let (status, out) = make_record_at(p);
    assert_fails(status, INVALID, &["req->step_id = -1"]);
    assert_eq!(out, SENTINEL_RECORD);
}

#[test]
fn a_0_2_request_flush_against_a_guard_page() {
    in_child_process("a_0_2_request_flush_against_a_guard_page", || {
        let guard = GuardPage::new();
        let p = guard.tail(REQUEST);
        dp_batch_request_init(p.cast());
        assert_request_defaults(p, REQUEST);
        set_ubatch_request(p);
        put(p, req::STEP_ID, 41i64);
        assert_eq!(make_record_at(p), (dp_status::DP_OK, UBATCH_RECORD));
    });
}

#[test]
fn a_newer_callers_larger_request_keeps_its_trailing_bytes() {
    in_child_process(
        "a_newer_callers_larger_request_keeps_its_trailing_bytes",
        || {
            let guard = GuardPage::new();
            let size = REQUEST + NEWER;
            let p = guard.tail(size);
            dp_batch_request_init_sized(p.cast(), size);
            assert_request_defaults(p, size);
            assert_eq!(
                &guard.tail_bytes(NEWER),
                &[FILL; NEWER],
                "init wrote past sizeof"
            );
            set_ubatch_request(p);
            assert_eq!(make_record_at(p), (dp_status::DP_OK, UBATCH_RECORD));
            assert_eq!(&guard.tail_bytes(NEWER), &[FILL; NEWER]);
            // Whatever the newer fields hold, this library does not look at them.
            // SAFETY: the last NEWER bytes of the guarded page.
            unsafe { guard.tail(NEWER).write_bytes(0xFF, NEWER) };
            assert_eq!(make_record_at(p), (dp_status::DP_OK, UBATCH_RECORD));
        },
    );
}

/// Two ranks' records that microbatch and pad: every rank runs 640 tokens.
const TWO_RANKS: [RankRecord; 2] = [
    UBATCH_RECORD,
    RankRecord {
        num_tokens_unpadded: 500,
        num_tokens_padded: 512,
        ..UBATCH_RECORD
    },
];

/// `dp_decide_batch` over `TWO_RANKS` placed flush against one guard page, the array against
/// another, the result at `res` (a `size`-byte struct); checks the outputs.
fn decide_at_guard_pages(res: *mut u8, size: usize) {
    let records_page = GuardPage::new();
    let array_page = GuardPage::new();
    let records = records_page.tail(size_of::<[RankRecord; 2]>());
    // SAFETY: 40 bytes at the end of the page; RankRecord is five i32, 4-aligned.
    unsafe { records.cast::<[RankRecord; 2]>().write(TWO_RANKS) };
    let array = array_page.tail(2 * size_of::<i32>()).cast::<i32>();
    let status = dp_decide_batch(
        records.cast(),
        2,
        1,
        DP_PAD_POLICY_EXPLICIT,
        2,
        array,
        res.cast(),
    );
    assert_eq!(status, dp_status::DP_OK, "{}", last_error());
    assert_eq!(
        get::<u32>(res, 0) as usize,
        size,
        "struct_size is the caller's"
    );
    let r = |offset: usize| get::<i32>(res, offset);
    assert_eq!(
        get::<u8>(res, offset_of!(dp_batch_result, should_ubatch)),
        1
    );
    assert_eq!(
        get::<u8>(res, offset_of!(dp_batch_result, should_dp_pad)),
        1
    );
    assert_eq!(r(offset_of!(dp_batch_result, dp_rank)), 1);
    assert_eq!(r(offset_of!(dp_batch_result, dp_size)), 2);
    assert_eq!(
        r(offset_of!(dp_batch_result, num_tokens_after_padding_self)),
        640
    );
    assert_eq!(r(offset_of!(dp_batch_result, min_num_tokens_unpadded)), 500);
    assert_eq!(
        get::<*const i32>(res, offset_of!(dp_batch_result, num_tokens_after_padding)),
        array.cast_const()
    );
    assert_eq!(get::<i64>(res, offset_of!(dp_batch_result, step_id)), 0);
    // SAFETY: the two int32 at the end of the array page.
    assert_eq!(unsafe { array.cast::<[i32; 2]>().read() }, [640, 640]);
}

#[test]
fn a_result_flush_against_a_guard_page() {
    in_child_process("a_result_flush_against_a_guard_page", || {
        let guard = GuardPage::new();
        let p = guard.tail(RESULT);
        dp_batch_result_init(p.cast());
        assert_eq!(get::<u32>(p, 0) as usize, RESULT);
        assert!(guard.tail_bytes(RESULT)[4..]
            .iter()
            .all(|&b| b == 0 || b == FILL));
        assert_eq!(get::<u8>(p, offset_of!(dp_batch_result, should_ubatch)), 0);
        assert_eq!(
            get::<usize>(p, offset_of!(dp_batch_result, num_tokens_after_padding)),
            0
        );
        assert_eq!(get::<i64>(p, offset_of!(dp_batch_result, step_id)), 0);
        decide_at_guard_pages(p, RESULT);
    });
}

#[test]
fn a_newer_callers_larger_result_keeps_its_trailing_bytes() {
    in_child_process(
        "a_newer_callers_larger_result_keeps_its_trailing_bytes",
        || {
            let guard = GuardPage::new();
            let size = RESULT + NEWER;
            let p = guard.tail(size);
            dp_batch_result_init_sized(p.cast(), size);
            assert_eq!(get::<u32>(p, 0) as usize, size);
            assert_eq!(
                &guard.tail_bytes(NEWER),
                &[FILL; NEWER],
                "init wrote past sizeof"
            );
            decide_at_guard_pages(p, size);
            assert_eq!(
                &guard.tail_bytes(NEWER),
                &[FILL; NEWER],
                "decide wrote past sizeof"
            );
        },
    );
}

#[test]
fn struct_size_is_read_alone_first() {
    in_child_process("struct_size_is_read_alone_first", || {
        // Structs that end right after their struct_size (a caller that lied, or a wild
        // pointer): only those 4 bytes are read before the refusal.
        let guard = GuardPage::new();
        put(guard.tail(4), 0, 4u32);
        let (status, out) = make_record_at(guard.tail(4));
        assert_fails(status, INVALID, &["req->struct_size = 4", "48"]);
        assert_eq!(out, SENTINEL_RECORD);
        let p = guard.tail(8);
        put(p, 0, 8u32);
        let records = [UBATCH_RECORD];
        assert_fails(
            dp_decide_batch(records.as_ptr(), 1, 0, 0, 2, null_mut(), p.cast()),
            INVALID,
            &["res->struct_size = 8", "56"],
        );
        let (eight, four) = (8u32.to_ne_bytes(), 4u32.to_ne_bytes());
        assert_eq!(
            guard.tail_bytes(8),
            [eight, four].concat(),
            "written on failure"
        );
        // Init with a size below the first version: nothing written.
        let guard = GuardPage::new();
        dp_batch_request_init_sized(guard.tail(REQUEST_0_1 - 4).cast(), REQUEST_0_1 - 4);
        assert!(last_error().contains("size = 44"), "{}", last_error());
        dp_batch_result_init_sized(guard.tail(RESULT_0_2 - 8).cast(), RESULT_0_2 - 8);
        assert!(last_error().contains("size = 48"), "{}", last_error());
        assert!(guard.tail_bytes(RESULT).iter().all(|&b| b == FILL));
    });
}

// ---------------------------------------------------------------------------------------
// Bool bytes
// ---------------------------------------------------------------------------------------

#[test]
fn every_bool_byte_other_than_0_and_1_is_refused_naming_the_field() {
    // (field, offset, the record word it decides)
    type Word = fn(&RankRecord) -> i32;
    let fields: [(&str, usize, Word); 3] = [
        ("req->allow_microbatching", req::ALLOW_MICROBATCHING, |r| {
            r.should_attempt_ubatch
        }),
        ("req->allow_dp_padding", req::ALLOW_DP_PADDING, |r| {
            r.should_attempt_dp_pad
        }),
        ("req->ubatch.enabled", req::UBATCH_ENABLED, |r| {
            r.should_attempt_ubatch
        }),
    ];
    let mut scratch = Scratch::new();
    let p = scratch.at(0);
    for (name, offset, word) in fields {
        for byte in 0..=255u8 {
            dp_batch_request_init(p.cast());
            set_ubatch_request(p);
            put(p, offset, byte);
            let (status, out) = make_record_at(p);
            if byte <= 1 {
                assert_eq!(
                    status,
                    dp_status::DP_OK,
                    "{name} = {byte}: {}",
                    last_error()
                );
                assert_eq!(word(&out), i32::from(byte), "{name} = {byte}");
                continue;
            }
            let needle = format!("{name} holds the byte {byte}");
            assert_fails(status, INVALID, &[&needle]);
            assert_eq!(out, SENTINEL_RECORD, "{name} = {byte}: record written");
            // The GPU path reads the request the same way (no NCCL in tests: no marker is
            // sent, the field is named).
            let mut res = sentinel_result();
            assert_fails(
                dp_coordinate_batch(fake_comm(), null_mut(), p.cast(), &mut res),
                INVALID,
                &[&needle],
            );
            assert_eq!(res.dp_rank, SENTINEL, "result written on failure");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Alignment
// ---------------------------------------------------------------------------------------

/// The scratch bytes, to check that a refused call wrote nothing.
fn snapshot(scratch: &Scratch) -> Vec<u8> {
    scratch.0.to_vec()
}

/// One C call with one argument moved off its alignment.
type Call = Box<dyn Fn() -> dp_status>;

#[test]
fn every_misaligned_pointer_of_the_host_path_is_an_error_naming_it() {
    let mut scratch = Scratch::new();
    // Layout inside the scratch buffer (all 16-aligned): request at 0 (96 bytes), result at
    // 128 (128 bytes), records at 256 (2 x 20 bytes), array at 320, record out at 384; a
    // pointer is moved by +k.
    let (req_at, res_at, records_at, array_at, out_at) = (0, 128, 256, 320, 384);
    let setup = |s: &mut Scratch| {
        *s = Scratch([FILL; 512]);
        dp_batch_request_init(s.at(req_at).cast());
        set_ubatch_request(s.at(req_at));
        dp_batch_result_init(s.at(res_at).cast());
        // SAFETY: 40 bytes inside the scratch buffer, 16-aligned.
        unsafe { s.at(records_at).cast::<[RankRecord; 2]>().write(TWO_RANKS) };
    };
    for k in 1..=3 {
        setup(&mut scratch);
        let before = snapshot(&scratch);
        // Every pointer derives from one base: no reborrow of the buffer invalidates another.
        let base = scratch.at(0);
        let (req, res, records, array, out) = (
            base.wrapping_add(req_at),
            base.wrapping_add(res_at),
            base.wrapping_add(records_at),
            base.wrapping_add(array_at),
            base.wrapping_add(out_at),
        );
        let moved = move |p: *mut u8| p.wrapping_add(k);
        let calls: [(&str, Call); 9] = [
            (
                "req",
                Box::new(move || dp_make_record(moved(req).cast(), out.cast())),
            ),
            (
                "out",
                Box::new(move || dp_make_record(req.cast(), moved(out).cast())),
            ),
            (
                "records",
                Box::new(move || {
                    dp_decide_batch(moved(records).cast(), 2, 0, 0, 2, array.cast(), res.cast())
                }),
            ),
            (
                "num_tokens_after_padding",
                Box::new(move || {
                    dp_decide_batch(records.cast(), 2, 0, 0, 2, moved(array).cast(), res.cast())
                }),
            ),
            (
                "res",
                Box::new(move || {
                    dp_decide_batch(records.cast(), 2, 0, 0, 2, array.cast(), moved(res).cast())
                }),
            ),
            (
                "req",
                Box::new(move || {
                    dp_coordinate_batch(fake_comm(), null_mut(), moved(req).cast(), res.cast())
                }),
            ),
            (
                "res",
                Box::new(move || {
                    dp_coordinate_batch(fake_comm(), null_mut(), req.cast(), moved(res).cast())
                }),
            ),
            (
                "req",
                Box::new(move || {
                    dp_batch_request_init_sized(moved(req).cast(), REQUEST);
                    dp_status::DP_ERR_INVALID_ARGUMENT
                }),
            ),
            (
                "res",
                Box::new(move || {
                    dp_batch_result_init_sized(moved(res).cast(), RESULT);
                    dp_status::DP_ERR_INVALID_ARGUMENT
                }),
            ),
        ];
        for (name, call) in &calls {
            let status = call();
            let needle = format!("{name} = 0x");
            assert_fails(status, INVALID, &[&needle, "is not aligned to"]);
            assert_eq!(snapshot(&scratch), before, "{name} + {k}: memory written");
        }
    }
}

#[test]
fn a_0_1_request_needs_4_byte_alignment_a_0_2_one_8() {
    let mut scratch = Scratch::new();
    let p = scratch.at(4); // 4-aligned, not 8-aligned
    dp_batch_request_init_sized(p.cast(), REQUEST_0_1);
    set_ubatch_request(p);
    assert_eq!(make_record_at(p), (dp_status::DP_OK, UBATCH_RECORD));
    // The same bytes claiming the 0.2 size (with step_id, an int64_t): 8 bytes required.
    put(p, req::STRUCT_SIZE, REQUEST as u32);
    let (status, out) = make_record_at(p);
    assert_fails(status, INVALID, &["req = 0x", "not aligned to 8 bytes"]);
    assert_eq!(out, SENTINEL_RECORD);
    let before = snapshot(&scratch);
    dp_batch_request_init_sized(p.cast(), REQUEST);
    assert!(
        last_error().contains("not aligned to 8 bytes"),
        "{}",
        last_error()
    );
    assert_eq!(
        snapshot(&scratch),
        before,
        "init wrote through a misaligned pointer"
    );
    // A result always holds pointers and an int64_t: 8 bytes.
    dp_batch_result_init_sized(p.cast(), RESULT);
    assert!(last_error().contains("res = 0x"), "{}", last_error());
    assert_eq!(snapshot(&scratch), before);
    let records = [UBATCH_RECORD];
    assert_fails(
        dp_decide_batch(records.as_ptr(), 1, 0, 0, 2, null_mut(), p.cast()),
        INVALID,
        &["res = 0x", "not aligned to 8 bytes"],
    );
    assert_eq!(snapshot(&scratch), before);
}

#[test]
fn null_is_refused_in_every_init() {
    dp_batch_request_init_sized(null_mut(), REQUEST);
    assert!(last_error().contains("req is NULL"), "{}", last_error());
    dp_batch_result_init_sized(null_mut(), RESULT);
    assert!(last_error().contains("res is NULL"), "{}", last_error());
    let (status, _) = make_record_at(null());
    assert_fails(status, INVALID, &["req is NULL"]);
}
