//! The decisions with no exchange through the C ABI (docs/ARCHITECTURE.md, "A local decision"
//! and "Reuse for draft steps"): `dp_decide_local`, `dp_reuse_agreement`,
//! `dp_uniform_draft_agreement`, on VLLM_V2.md's examples 18 and 20.

mod v2_common;

use std::ptr::{null, null_mut};

use dpcoord::ffi::*;
use dpcoord::rules::Request;
use v2_common::{decode_grid, last_error, options, step, CgMode, Handle, Step, VllmCfg, SENTINEL};

fn result() -> dp_batch_result {
    let mut r = std::mem::MaybeUninit::<dp_batch_result>::zeroed();
    dp_batch_result_init(r.as_mut_ptr());
    // SAFETY: initialised by dp_batch_result_init.
    unsafe { r.assume_init() }
}

/// `(mode, tokens, requests, uniform, query bound, microbatches)` of a result's descriptor.
fn graph(r: &dp_batch_result) -> [i32; 6] {
    [
        r.graph_mode,
        r.graph_num_tokens,
        r.graph_num_reqs,
        r.graph_uniform_token_count,
        r.graph_max_query_len,
        r.num_ubatches,
    ]
}

fn c(req: &Request) -> dp_batch_request {
    dp_batch_request::from(req)
}

/// One V2 step of every rank through the host path: each rank's result and array.
fn target_step(table: &Handle, reqs: &[Request]) -> Vec<(dp_batch_result, Vec<i32>)> {
    let dp = reqs.len();
    let opts = options(table, None);
    let slots: Vec<Slot> = reqs
        .iter()
        .map(|q| {
            let mut s = Slot { opaque: [0; 24] };
            assert_eq!(
                dp_make_slot(&c(q), &opts, &mut s),
                dp_status::DP_OK,
                "{}",
                last_error()
            );
            s
        })
        .collect();
    (0..dp)
        .map(|r| {
            let mut res = result();
            let mut out = vec![SENTINEL; dp];
            let status = dp_decide_slots(
                slots.as_ptr(),
                dp as i32,
                r as i32,
                &opts,
                out.as_mut_ptr(),
                &mut res,
            );
            assert_eq!(status, dp_status::DP_OK, "{}", last_error());
            (res, out)
        })
        .collect()
}

#[test]
fn example_18_skip_coordination_is_local_and_per_rank() {
    let built = VllmCfg::e_base().build();
    let table = Handle::new(Some((&built.graphs, built.decode_query_len)));
    let opts = options(&table, None);
    for (s, want, array) in [
        (step(9, 9).u(1), [2, 16, 16, 1, -1, 1], [16, 16]),
        (step(300, 1), [0, 300, 1, 0, -1, 1], [300, 300]),
    ] {
        let mut res = result();
        let mut out = [SENTINEL; 2];
        let status = dp_decide_local(
            &c(&s.request(None)),
            2,
            0,
            &opts,
            out.as_mut_ptr(),
            &mut res,
        );
        assert_eq!(status, dp_status::DP_OK, "{}", last_error());
        assert!(res.local, "a local decision says so");
        assert_eq!(graph(&res), want);
        assert_eq!(out, array);
        assert_eq!(res.rules, 1);
    }
    // V1: should_ubatch from this rank's own last microbatch, [own padded] x dp_size.
    let mut v1 = Request {
        num_tokens_unpadded: 600,
        num_tokens_padded: 640,
        allow_microbatching: true,
        uniform_decode: 0,
        cudagraph_mode: 2,
        ..Request::default()
    };
    v1.ubatch.enabled = true;
    let mut res = result();
    let mut out = [SENTINEL; 3];
    assert_eq!(
        dp_decide_local(&c(&v1), 3, 1, null(), out.as_mut_ptr(), &mut res),
        dp_status::DP_OK,
        "{}",
        last_error()
    );
    assert!(res.local && res.should_ubatch && res.should_dp_pad);
    assert_eq!((out, res.rules, res.num_ubatches), ([640, 640, 640], 0, 2));
}

/// The drafter's decode table: FULL_DECODE_ONLY, query length 1, requests up to max_num_seqs.
fn draft_decode(target: &VllmCfg) -> v2_common::Built {
    VllmCfg {
        mode: CgMode::FullDecodeOnly,
        num_spec: 0,
        dbo: None,
        decode_sizes: Some(decode_grid(target.max_num_seqs)),
        ..target.clone()
    }
    .build()
}

#[test]
fn example_20_reuse_through_the_c_abi() {
    let target = VllmCfg::e_dbo_spec4();
    let built = target.build();
    let table = Handle::new(Some((&built.graphs, built.decode_query_len)));
    let steps = [step(80, 20).u(4).b(), step(120, 30).u(4).b()];
    let reqs: Vec<Request> = steps
        .iter()
        .map(|s| Request {
            step_id: 5,
            ..s.request(built.dbo)
        })
        .collect();
    let priors = target_step(&table, &reqs);
    let prefill = VllmCfg {
        dbo: None,
        ..target.clone()
    }
    .build();
    let prefill = Handle::new(Some((&prefill.graphs, prefill.decode_query_len)));
    let decode = draft_decode(&target);
    let decode = Handle::new(Some((&decode.graphs, decode.decode_query_len)));
    for (rank, ((prior, _), s)) in priors.iter().zip(&steps).enumerate() {
        assert_eq!(
            graph(prior),
            [2, 120, 30, 4, -1, 2],
            "rank {rank}: the target step"
        );
        let draft = Request {
            parent_step_id: 5,
            ..Step { t: 120, ..*s }.request(None)
        };
        let mut res = result();
        let mut out = [SENTINEL; 2];
        let status = dp_reuse_agreement(prior, &c(&draft), prefill.0, out.as_mut_ptr(), &mut res);
        assert_eq!(status, dp_status::DP_OK, "{}", last_error());
        assert_eq!(
            graph(&res),
            [2, 120, 30, 4, -1, 1],
            "rank {rank}: the draft prefill"
        );
        assert_eq!(out, [120, 120]);
        assert_eq!(
            (res.agreed_uniform_token_count, res.eager, res.local),
            (4, false, false)
        );
        assert_eq!(res.step_id, 5);
        let mut res = result();
        let mut out = [SENTINEL; 2];
        let reqs = s.r.min(prior.max_num_reqs);
        let status =
            dp_uniform_draft_agreement(prior, reqs, 1, decode.0, out.as_mut_ptr(), &mut res);
        assert_eq!(status, dp_status::DP_OK, "{}", last_error());
        assert_eq!(
            graph(&res),
            [2, 32, 32, 1, -1, 1],
            "rank {rank}: T = 30 x 1"
        );
        assert_eq!(out, [32, 32]);
        assert_eq!(
            (res.agreed_uniform_token_count, res.agreed_max_query_len),
            (1, 1)
        );
    }
}

#[test]
fn reuse_refuses_what_vllm_asserts_and_a_draft_of_another_step() {
    let built = VllmCfg::e_base().build();
    let table = Handle::new(Some((&built.graphs, built.decode_query_len)));
    let steps = [step(9, 9).u(1), step(12, 12).u(1)];
    let reqs: Vec<Request> = steps
        .iter()
        .map(|s| Request {
            step_id: 7,
            ..s.request(None)
        })
        .collect();
    let priors = target_step(&table, &reqs);
    let (prior, prior_array) = &priors[0];
    let fails = |draft: Request, want: dp_status, needle: &str| {
        let mut res = result();
        res.dp_rank = SENTINEL;
        let mut out = [SENTINEL; 2];
        let status = dp_reuse_agreement(prior, &c(&draft), table.0, out.as_mut_ptr(), &mut res);
        assert_eq!(status, want, "{}", last_error());
        assert!(last_error().contains(needle), "{}", last_error());
        assert_eq!(
            (out, res.dp_rank),
            ([SENTINEL; 2], SENTINEL),
            "written on failure"
        );
    };
    let draft = Step { t: 16, ..steps[0] }.request(None);
    fails(
        Request {
            num_tokens_unpadded: 15,
            ..draft
        },
        dp_status::DP_ERR_INVALID_ARGUMENT,
        "15",
    );
    fails(
        Request {
            parent_step_id: 6,
            ..draft
        },
        dp_status::DP_ERR_INCONSISTENT_RANKS,
        "6",
    );
    // A V1 result is not a V2 agreement.
    let mut v1 = *prior;
    v1.rules = 0;
    let mut res = result();
    assert_eq!(
        dp_reuse_agreement(&v1, &c(&draft), table.0, null_mut(), &mut res),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert!(
        last_error().contains("prior->rules = 0"),
        "{}",
        last_error()
    );
    // The output may not alias the prior's array.
    let mut aliased = *prior;
    let mut shared = prior_array.clone();
    aliased.num_tokens_after_padding = shared.as_ptr();
    let mut res = result();
    assert_eq!(
        dp_reuse_agreement(&aliased, &c(&draft), table.0, shared.as_mut_ptr(), &mut res),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("overlaps"), "{}", last_error());
    // The good draft works.
    let mut res = result();
    assert_eq!(
        dp_reuse_agreement(prior, &c(&draft), table.0, null_mut(), &mut res),
        dp_status::DP_OK,
        "{}",
        last_error()
    );
    assert!(!res.has_num_tokens_after_padding, "no array asked for");
}
