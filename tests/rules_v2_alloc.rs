//! No allocation per call after the table is built: `GraphTable::dispatch`, `make_v2_record`,
//! `decide_v2` (1024 ranks, with and without a dead-rank mask, every branch),
//! `decide_local_v1`, `decide_local_v2`, `reuse_agreement` and `uniform_draft_agreement`,
//! counted by a global allocator (per thread, so other tests' threads do not count).

mod v2_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use dpcoord::rules::{
    decide_local_v1, decide_local_v2, decide_v2, make_v2_record, reuse_agreement,
    uniform_draft_agreement, Prior, Request, UbatchConfig, V2Config, V2Record,
};
use v2_common::{step, Step, VllmCfg};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// const-initialised thread-local Cell, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(|c| c.get())
}

/// Runs `f` once, then counts the allocations of 100 more.
fn allocations_after_first(mut f: impl FnMut()) -> u64 {
    f();
    let before = allocations();
    for _ in 0..100 {
        f();
    }
    allocations() - before
}

#[test]
fn the_counter_counts() {
    let n = allocations_after_first(|| drop(std::hint::black_box(vec![1u8; 16])));
    assert_eq!(n, 100);
}

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
