//! No allocation per call after the table is built: `GraphTable::dispatch`, `make_v2_record`,
//! `decide_v2` (1024 ranks, with and without a dead-rank mask, every branch),
//! `decide_local_v1`, `decide_local_v2`, `reuse_agreement` and `uniform_draft_agreement`, and
//! the slot's host path (`dp_make_slot`, `dp_decide_slots` at 1024 ranks, V1 and V2, with and
//! without a dead-rank mask), counted by a global allocator (per thread, so other tests' threads
//! do not count).

mod alloc_common;
mod v2_common;

use alloc_common::allocations_after_first;
use dpcoord::ffi::{
    dp_batch_request, dp_batch_result, dp_batch_result_init, dp_decide_slots, dp_make_slot,
    dp_status, Slot,
};
use dpcoord::rules::{
    decide_local_v1, decide_local_v2, decide_v2, make_v2_record, reuse_agreement,
    uniform_draft_agreement, Prior, Request, UbatchConfig, V2Config, V2Record, DP_RULES_VLLM_V1,
    DP_RULES_VLLM_V2,
};
use v2_common::{options, step, Handle, Step, VllmCfg};

#[test]
fn dispatch_allocates_nothing() {
    let table = VllmCfg::e_dbo().build().table();
    let n = allocations_after_first(|| {
        for (r, t, u, mql, ub) in [
            (3, 3, 1, 1, 1),
            (100, 100, 1, -1, 2),
            (7, 300, 0, -1, 1),
            (1, 5000, 0, -1, 1),
        ] {
            std::hint::black_box(table.dispatch(r, t, u, 0, mql, ub));
        }
    });
    assert_eq!(n, 0, "dispatch allocated");
}

/// 1024 records of `make(rank)`, every branch's kind of step.
fn records(table: &dpcoord::rules::GraphTable, make: impl Fn(usize) -> Step) -> Vec<V2Record> {
    let dbo = VllmCfg::e_dbo().build().dbo;
    (0..1024)
        .map(|i| make_v2_record(&make(i).request(dbo), Some(table)).expect("valid"))
        .collect()
}

#[test]
fn decide_allocates_nothing_in_any_branch() {
    let built = VllmCfg::e_dbo().build();
    let table = built.table();
    let cfg = V2Config::of(&step(1, 1).request(built.dbo), Some(&table));
    let mut live = vec![1u8; 1024];
    for r in [3, 100, 101, 700] {
        live[r] = 0;
    }
    let steps: [&dyn Fn(usize) -> Step; 5] = [
        &|i| step(40 + (i % 9) as i32, 40 + (i % 9) as i32).u(1).b(), // microbatched
        &|i| step(5 + (i % 50) as i32, 5 + (i % 50) as i32).u(1),     // padded
        &|i| step(600 + i as i32, 1),                                 // eager
        &|_| step(0, 0),                                              // idle
        &|i| step(1 + (i % 3) as i32, 1).e(),                         // eager (need_eager)
    ];
    for make in steps {
        let recs = records(&table, make);
        let mut out = vec![0i32; 1024];
        for mask in [None, Some(&live[..])] {
            let n = allocations_after_first(|| {
                let a = decide_v2(&recs, 5, mask, &cfg, Some(&table), Some(&mut out));
                std::hint::black_box(a.expect("valid"));
            });
            assert_eq!(n, 0, "decide_v2 allocated");
        }
    }
}

#[test]
fn local_and_reuse_allocate_nothing() {
    let built = VllmCfg::e_dbo_spec4().build();
    let table = built.table();
    let v1 = Request {
        num_tokens_unpadded: 600,
        num_tokens_padded: 608,
        allow_microbatching: true,
        uniform_decode: 0,
        cudagraph_mode: 2,
        ubatch: UbatchConfig {
            enabled: true,
            ..UbatchConfig::default()
        },
        ..Request::default()
    };
    let v2 = step(80, 20).u(4).b().request(built.dbo);
    let mut out = vec![0i32; 1024];
    let n = allocations_after_first(|| {
        std::hint::black_box(decide_local_v1(&v1, 1024, 7, Some(&mut out)).expect("valid"));
        std::hint::black_box(make_v2_record(&v2, Some(&table)).expect("valid"));
        std::hint::black_box(
            decide_local_v2(&v2, 1024, 7, Some(&table), Some(&mut out)).expect("valid"),
        );
    });
    assert_eq!(n, 0, "a local decision allocated");
    let agreement = decide_local_v2(&v2, 1024, 7, Some(&table), Some(&mut out)).unwrap();
    let array = out.clone();
    let prior = Prior {
        dp_size: 1024,
        dp_rank: 7,
        step_id: 3,
        agreement,
        array: Some(&array),
    };
    let draft = Request {
        parent_step_id: 3,
        ..Step {
            t: array[7],
            ..step(80, 20).u(4)
        }
        .request(None)
    };
    let n = allocations_after_first(|| {
        std::hint::black_box(
            reuse_agreement(&prior, &draft, Some(&table), Some(&mut out)).expect("valid"),
        );
        std::hint::black_box(
            uniform_draft_agreement(&prior, 20, 1, Some(&table), Some(&mut out)).expect("valid"),
        );
    });
    assert_eq!(n, 0, "a reuse allocated");
}

#[test]
fn slot_make_and_decide_allocate_nothing() {
    let built = VllmCfg::e_dbo().build();
    let handle = Handle::new(Some((&built.graphs[..], built.decode_query_len)));
    let mut live = vec![1u8; 1024];
    for r in [3, 100, 101, 700] {
        live[r] = 0;
    }
    let mut res = std::mem::MaybeUninit::<dp_batch_result>::zeroed();
    dp_batch_result_init(res.as_mut_ptr());
    // SAFETY: initialised by dp_batch_result_init.
    let mut res = unsafe { res.assume_init() };
    let mut out = vec![0i32; 1024];
    for rules in [DP_RULES_VLLM_V1, DP_RULES_VLLM_V2] {
        let reqs: Vec<dp_batch_request> = (0..1024)
            .map(|i| {
                let t = 40 + i % 9;
                let mut q = step(t, t).u(1).b().request(built.dbo);
                q.rules = rules;
                q.uniform_decode = 1;
                dp_batch_request::from(&q)
            })
            .collect();
        for mask in [None, Some(&live[..])] {
            let opts = options(&handle, mask);
            let mut slots = vec![Slot { opaque: [0; 24] }; 1024];
            let n = allocations_after_first(|| {
                for (q, s) in reqs.iter().zip(slots.iter_mut()) {
                    let st = dp_make_slot(q, &opts, s);
                    assert_eq!(st, dp_status::DP_OK, "{}", v2_common::last_error());
                }
            });
            assert_eq!(n, 0, "dp_make_slot allocated (rules {rules})");
            let n = allocations_after_first(|| {
                let st =
                    dp_decide_slots(slots.as_ptr(), 1024, 5, &opts, out.as_mut_ptr(), &mut res);
                assert_eq!(st, dp_status::DP_OK, "{}", v2_common::last_error());
            });
            assert_eq!(n, 0, "dp_decide_slots allocated (rules {rules})");
            assert_eq!(res.rules, rules);
        }
    }
}
