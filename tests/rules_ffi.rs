//! `dp_decide_options_init`, `dp_decide_batch_with_options` and `dp_decide_batch` through the
//! C ABI: dead slots holding garbage, step ids into `res->step_id`, the pointer and size
//! checks, outputs untouched on error, and the plain call equal to the options call.

mod ffi_common;

use std::mem::size_of;

use dpcoord::ffi::{
    dp_batch_result, dp_decide_batch, dp_decide_batch_with_options, dp_decide_options,
    dp_decide_options_init, dp_decide_options_init_sized, dp_graphs, dp_status,
    DP_PAD_POLICY_EXPLICIT, DP_PAD_POLICY_WHEN_CUDAGRAPH,
};
use dpcoord::rules::RankRecord;
use ffi_common::{assert_fails, last_error, sentinel_result, SENTINEL};

fn rec(unpadded: i32, padded: i32, ubatch: i32, dp_pad: i32, mode: i32) -> RankRecord {
    RankRecord::from_words([unpadded, padded, ubatch, dp_pad, mode])
}

fn options() -> dp_decide_options {
    let mut o = dp_decide_options {
        struct_size: 0,
        pad_policy: SENTINEL,
        num_ubatches: SENTINEL,
        active_ranks: 8 as *const u8,
        step_ids: 8 as *const i64,
        graphs: 8 as *const dp_graphs,
    };
    dp_decide_options_init(&mut o);
    o
}

fn with_options(
    records: &[RankRecord],
    rank: i32,
    o: &dp_decide_options,
    out: &mut [i32],
    res: &mut dp_batch_result,
) -> dp_status {
    dp_decide_batch_with_options(
        records.as_ptr(),
        records.len() as i32,
        rank,
        o,
        out.as_mut_ptr(),
        res,
    )
}

#[test]
fn options_init_writes_the_defaults() {
    let o = options();
    assert_eq!(o.struct_size as usize, size_of::<dp_decide_options>());
    assert_eq!(size_of::<dp_decide_options>(), 40);
    assert_eq!(o.pad_policy, DP_PAD_POLICY_EXPLICIT);
    assert_eq!(o.num_ubatches, 2);
    assert!(o.active_ranks.is_null());
    assert!(o.step_ids.is_null());
    assert!(o.graphs.is_null());
    // A larger caller struct: only sizeof is written, struct_size records the caller's size.
    let mut big = [0xAAAA_AAAA_AAAA_AAAAu64; 7];
    dp_decide_options_init_sized(big.as_mut_ptr().cast(), 56);
    assert_eq!(big[0] as u32, 56);
    assert_eq!(&big[5..], &[0xAAAA_AAAA_AAAA_AAAA; 2]);
    // A 0.2 caller's struct (32 bytes): the 0.3 `graphs` is not written.
    let mut old = [0xAAAA_AAAA_AAAA_AAAAu64; 5];
    dp_decide_options_init_sized(old.as_mut_ptr().cast(), 32);
    assert_eq!(old[0] as u32, 32);
    assert_eq!(old[4], 0xAAAA_AAAA_AAAA_AAAA);
    // Too small or NULL: nothing written, the message names it.
    let mut small = [0xAAAA_AAAA_AAAA_AAAAu64; 4];
    dp_decide_options_init_sized(small.as_mut_ptr().cast(), 31);
    assert_eq!(small, [0xAAAA_AAAA_AAAA_AAAA; 4]);
    assert!(last_error().contains("size = 31"), "{}", last_error());
    dp_decide_options_init(std::ptr::null_mut());
    assert!(last_error().contains("opts is NULL"), "{}", last_error());
}

#[test]
fn garbage_in_dead_slots_is_never_validated() {
    let garbage = rec(i32::MIN, -9, 5, -3, 77);
    let records = [
        rec(600, 608, 1, 1, 2),
        garbage,
        rec(700, 704, 1, 1, 1),
        garbage,
    ];
    let live = [1u8, 0, 1, 0];
    let mut o = options();
    o.active_ranks = live.as_ptr();
    let mut out = [SENTINEL; 4];
    let mut res = sentinel_result();
    assert_eq!(
        with_options(&records, 2, &o, &mut out, &mut res),
        dp_status::DP_OK,
        "{}",
        last_error()
    );
    assert!(res.should_ubatch && res.should_dp_pad);
    assert_eq!(res.synced_cudagraph_mode, 1);
    assert_eq!(
        (res.max_num_tokens_padded, res.min_num_tokens_unpadded),
        (704, 600)
    );
    assert_eq!(out, [704; 4]);
    assert!(res.has_num_tokens_after_padding);
    assert_eq!(res.num_tokens_after_padding, out.as_ptr());
    assert_eq!(res.step_id, 0);
    // Without the mask the garbage is refused, naming the slot, and nothing is written.
    let mut out = [SENTINEL; 4];
    let mut res = sentinel_result();
    let status = with_options(&records, 2, &options(), &mut out, &mut res);
    assert_fails(status, dp_status::DP_ERR_INVALID_ARGUMENT, &["records[1]"]);
    assert_eq!(out, [SENTINEL; 4]);
    assert_eq!(res.dp_rank, SENTINEL);
}

#[test]
fn step_ids_reach_the_result_or_name_two_ranks() {
    let records = [rec(10, 16, 0, 0, 1); 3];
    let ids = [41i64, 41, 41];
    let mut o = options();
    o.pad_policy = DP_PAD_POLICY_WHEN_CUDAGRAPH;
    o.step_ids = ids.as_ptr();
    let mut out = [SENTINEL; 3];
    let mut res = sentinel_result();
    assert_eq!(
        with_options(&records, 0, &o, &mut out, &mut res),
        dp_status::DP_OK
    );
    assert_eq!(res.step_id, 41);
    assert!(res.should_dp_pad);
    let ahead = [41i64, 42, 41];
    o.step_ids = ahead.as_ptr();
    let mut res = sentinel_result();
    let status = with_options(&records, 0, &o, &mut out, &mut res);
    assert_fails(
        status,
        dp_status::DP_ERR_INCONSISTENT_RANKS,
        &["rank 0 passed step_id 41", "rank 1 passed step_id 42"],
    );
    assert_eq!(res.step_id, i64::from(SENTINEL));
    // The dead rank's id is not compared.
    let live = [1u8, 0, 1];
    o.active_ranks = live.as_ptr();
    assert_eq!(
        with_options(&records, 0, &o, &mut out, &mut res),
        dp_status::DP_OK
    );
    assert_eq!(res.step_id, 41);
}

#[test]
fn plain_decide_equals_options_decide() {
    let records = [
        rec(600, 608, 1, 1, 2),
        rec(520, 520, 1, 1, 0),
        rec(900, 904, 1, 1, 2),
    ];
    for policy in [DP_PAD_POLICY_EXPLICIT, DP_PAD_POLICY_WHEN_CUDAGRAPH] {
        for n in [2, 3, 4] {
            let mut a = [SENTINEL; 3];
            let mut b = [SENTINEL; 3];
            let mut ra = sentinel_result();
            let mut rb = sentinel_result();
            let sa = dp_decide_batch(records.as_ptr(), 3, 1, policy, n, a.as_mut_ptr(), &mut ra);
            let mut o = options();
            o.pad_policy = policy;
            o.num_ubatches = n;
            let sb = with_options(&records, 1, &o, &mut b, &mut rb);
            assert_eq!((sa, sb), (dp_status::DP_OK, dp_status::DP_OK));
            assert_eq!(a, b);
            ra.num_tokens_after_padding = std::ptr::null();
            rb.num_tokens_after_padding = std::ptr::null();
            assert_eq!(format!("{ra:?}"), format!("{rb:?}"));
        }
    }
}

#[test]
fn option_pointers_and_sizes_are_checked() {
    let records = [rec(1, 1, 0, 0, 0); 2];
    let mut out = [SENTINEL; 2];
    let mut res = sentinel_result();
    let status = dp_decide_batch_with_options(
        records.as_ptr(),
        2,
        0,
        std::ptr::null(),
        out.as_mut_ptr(),
        &mut res,
    );
    assert_fails(
        status,
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["opts is NULL"],
    );
    let mut o = options();
    o.struct_size = 16;
    let status = with_options(&records, 0, &o, &mut out, &mut res);
    assert_fails(
        status,
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["opts->struct_size = 16", "dp_decide_options_init"],
    );
    // Misaligned step ids.
    let ids = [0i64; 3];
    let mut o = options();
    o.step_ids = ids.as_ptr().cast::<u8>().wrapping_add(4).cast();
    let status = with_options(&records, 0, &o, &mut out, &mut res);
    assert_fails(
        status,
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["opts->step_ids", "aligned"],
    );
    // The output array may not overlap the mask.
    let mut words = [0x0101_0101i32; 4];
    let mut o = options();
    o.active_ranks = words.as_ptr().cast();
    let status =
        dp_decide_batch_with_options(records.as_ptr(), 2, 0, &o, words.as_mut_ptr(), &mut res);
    assert_fails(
        status,
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["num_tokens_after_padding overlaps opts->active_ranks"],
    );
    // A bad live byte and a dead calling rank, named.
    let live = [1u8, 2];
    let mut o = options();
    o.active_ranks = live.as_ptr();
    let status = with_options(&records, 0, &o, &mut out, &mut res);
    assert_fails(
        status,
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["active_ranks[1] = 2"],
    );
    let live = [0u8, 1];
    o.active_ranks = live.as_ptr();
    let status = with_options(&records, 0, &o, &mut out, &mut res);
    assert_fails(
        status,
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["active_ranks[0] = 0", "dp_rank = 0"],
    );
    assert_eq!(out, [SENTINEL; 2]);
}

mod differential {
    //! The C entry point (which may run the AVX2 build of the pass) against the Rust rules
    //! (the baseline build), on random records, masks and step ids, valid and not.
    use super::*;
    use dpcoord::rules::{decide_with_options, DecideOptions};
    use proptest::prelude::*;

    /// A valid record (the step's invalid one, if any, is planted by the test).
    fn record() -> impl Strategy<Value = RankRecord> {
        (0..3_000i32, 0..64i32, 0..=1i32, 0..=1i32, 0..=2i32)
            .prop_map(|(u, extra, ub, dp, m)| RankRecord::from_words([u, u + extra, ub, dp, m]))
    }

    /// Words that make a record invalid, one field at a time.
    const BAD: [(usize, i32); 6] = [(0, -1), (1, -5), (2, 2), (3, -1), (4, 3), (4, i32::MIN)];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

        #[test]
        fn c_entry_point_equals_rules(
            records in prop::collection::vec(record(), 1..140),
            mask in prop::collection::vec(prop_oneof![9 => Just(1u8), 2 => Just(0u8)], 140),
            use_mask in any::<bool>(),
            ids in prop_oneof![Just(None), Just(Some(5i64)), Just(Some(-1i64))],
            odd_id in any::<prop::sample::Index>(),
            pad_policy in 0..=1i32,
            n in 2..=4i32,
            rank in any::<prop::sample::Index>(),
            same_pad in any::<bool>(),
            all_ubatch in any::<bool>(),
            bad in prop::option::weighted(0.3, (any::<prop::sample::Index>(), 0..BAD.len())),
        ) {
            let mut records = records;
            if all_ubatch {
                // Every rank attempts, with counts where the last-microbatch-empty rule
                // depends on num_ubatches: unpadded 600..650, padded up to ~1030.
                for r in records.iter_mut() {
                    let extra = r.num_tokens_padded - r.num_tokens_unpadded;
                    r.num_tokens_unpadded = 600 + r.num_tokens_unpadded % 50;
                    r.num_tokens_padded = r.num_tokens_unpadded + 6 * extra;
                    r.should_attempt_ubatch = 1;
                }
            }
            if let Some((at, which)) = bad {
                let (field, value) = BAD[which];
                let r = at.index(records.len());
                let mut words = records[r].to_words();
                words[field] = value;
                records[r] = RankRecord::from_words(words);
            }
            if same_pad {
                for r in records.iter_mut().filter(|r| r.should_attempt_dp_pad == 0) {
                    r.should_attempt_dp_pad = 1;
                }
            }
            let size = records.len();
            let live: Vec<u8> = mask[..size].to_vec();
            let step_ids: Option<Vec<i64>> = ids.map(|id| {
                let mut v = vec![id.max(0); size];
                if id < 0 {
                    v[odd_id.index(size)] = 6;
                }
                v
            });
            let rank = rank.index(size) as i32;
            let options = DecideOptions {
                pad_policy,
                num_ubatches: n,
                active_ranks: use_mask.then_some(live.as_slice()),
                step_ids: step_ids.as_deref(),
            };
            let mut want_out = vec![SENTINEL; size];
            let want = decide_with_options(&records, rank, &options, Some(&mut want_out));

            let mut o = super::options();
            o.pad_policy = pad_policy;
            o.num_ubatches = n;
            if use_mask {
                o.active_ranks = live.as_ptr();
            }
            if let Some(ids) = &step_ids {
                o.step_ids = ids.as_ptr();
            }
            let mut out = vec![SENTINEL; size];
            let mut res = sentinel_result();
            let status = with_options(&records, rank, &o, &mut out, &mut res);
            match want {
                Ok((d, id)) => {
                    prop_assert_eq!(status, dp_status::DP_OK, "{}", last_error());
                    prop_assert_eq!(res.should_ubatch, d.should_ubatch);
                    prop_assert_eq!(res.should_dp_pad, d.should_dp_pad);
                    prop_assert_eq!(res.synced_cudagraph_mode, d.synced_cudagraph_mode);
                    prop_assert_eq!(res.num_tokens_after_padding_self, d.num_tokens_after_padding_self);
                    prop_assert_eq!(res.max_num_tokens_padded, d.max_num_tokens_padded);
                    prop_assert_eq!(res.min_num_tokens_unpadded, d.min_num_tokens_unpadded);
                    prop_assert_eq!(res.has_num_tokens_after_padding, d.has_num_tokens_after_padding);
                    prop_assert_eq!(res.step_id, id);
                    prop_assert_eq!(&out, &want_out);
                }
                Err(e) => {
                    let message = last_error();
                    prop_assert_ne!(status, dp_status::DP_OK);
                    prop_assert_eq!(status as u32, e.kind.code());
                    prop_assert!(message.ends_with(&e.message), "{} vs {}", message, e.message);
                    prop_assert_eq!(&out, &vec![SENTINEL; size]);
                }
            }
        }
    }
}
