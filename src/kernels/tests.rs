use super::*;
use crate::slot::{Settings, Slot, CHECK_GOLDEN};
use std::path::Path;

fn committed_layout() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels/layout.h");
    std::fs::read_to_string(path).expect("src/kernels/layout.h exists")
}

/// The value layout.h `#define`s `name` to (its text).
fn defined(header: &str, name: &str) -> Option<String> {
    let prefix = format!("#define {name} ");
    header
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
}

#[test]
fn committed_layout_header_is_generated_from_the_rust_constants() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels/layout.h");
    let want = layout_header();
    if std::env::var_os("DPCOORD_BLESS").is_some() {
        std::fs::write(&path, &want).expect("write layout.h");
    }
    assert_eq!(
        committed_layout(),
        want,
        "src/kernels/layout.h differs from the constants of src/kernels/mod.rs: run \
         `DPCOORD_BLESS=1 cargo test --lib kernels`, then `python3 scripts/gen_ptx.py`"
    );
}

#[test]
fn the_kernel_uses_no_layout_number_of_its_own() {
    // Every layout name the kernel uses comes from layout.h: none is #defined in the .cu.
    let cu = include_str!("postprocess.cu");
    for (name, _) in layout()
        .into_iter()
        .chain([("CHECK_WEIGHTS", String::new())])
    {
        assert!(
            !cu.contains(&format!("#define {name} ")),
            "postprocess.cu defines {name} itself; it must come from layout.h"
        );
    }
    assert!(cu.contains("#include \"layout.h\""));
}

#[test]
fn layout_h_names_every_slot_word_once() {
    // (name, first word, words): every field of slot.rs's table, in order.
    let fields = [
        ("SLOT_SEQ", at::SEQ, 1),
        ("SLOT_LAYOUT", at::LAYOUT, 1),
        ("SLOT_RULES", at::RULES, 1),
        ("SLOT_PAD_POLICY", at::PAD_POLICY, 1),
        ("SLOT_NUM_UBATCHES", at::NUM_UBATCHES, 1),
        ("SLOT_DECODE_THRESHOLD", at::DECODE_THRESHOLD, 1),
        ("SLOT_PREFILL_THRESHOLD", at::PREFILL_THRESHOLD, 1),
        ("SLOT_GRAPHS", at::GRAPHS, 1),
        ("SLOT_DECODE_QUERY_LEN", at::DECODE_QUERY_LEN, 1),
        ("SLOT_STEP", at::STEP, 2),
        ("SLOT_PARENT", at::PARENT, 2),
        ("SLOT_ARRIVAL", at::ARRIVAL, 2),
        ("SLOT_RECORD", at::RECORD, at::RECORD_LEN),
        ("SLOT_CHECK", at::CHECK, 1),
    ];
    // They tile the slot: no word unnamed, none named twice.
    let mut next = 0;
    for (name, first, words) in fields {
        assert_eq!(
            first, next,
            "{name} starts at word {first}, word {next} expected"
        );
        next += words;
    }
    assert_eq!(next, slot::SLOT3_WORDS, "the slot has words no field names");
    assert_eq!(std::mem::size_of::<Slot>(), 4 * SLOT_WORDS);
    // layout.h names each at its word, and the configuration the kernel compares (words
    // SLOT_LAYOUT..=SLOT_DECODE_QUERY_LEN) is exactly the slot's.
    let header = committed_layout();
    for (name, first, _) in fields {
        assert_eq!(
            defined(&header, name).as_deref(),
            Some(first.to_string().as_str()),
            "layout.h does not name slot word {first} {name}"
        );
    }
    assert_eq!(
        defined(&header, "SLOT_WORDS").as_deref(),
        Some(slot::SLOT3_WORDS.to_string().as_str())
    );
    let s = Slot::marker(1, 2);
    assert_eq!(
        s.config_words().as_ptr(),
        s.opaque[SLOT_LAYOUT..=SLOT_DECODE_QUERY_LEN].as_ptr()
    );
    assert_eq!(
        s.config_words().len(),
        SLOT_DECODE_QUERY_LEN + 1 - SLOT_LAYOUT
    );
}

#[test]
fn the_generated_checksum_constants_are_slot_rs_ones_and_seal_its_slots() {
    let header = committed_layout();
    let target = defined(&header, "CHECK_TARGET").expect("layout.h defines CHECK_TARGET");
    let target: u32 = target.strip_suffix('u').unwrap().parse().unwrap();
    let weights: Vec<u32> = defined(&header, "CHECK_WEIGHTS")
        .expect("layout.h defines CHECK_WEIGHTS")
        .split(", ")
        .map(|k| u32::from_str_radix(k.trim_start_matches("0x").trim_end_matches('u'), 16).unwrap())
        .collect();
    // The documented weights: K[i] = CHECK_GOLDEN * (2i + 1) for the words before the
    // checksum, 1 for the checksum itself.
    assert_eq!(weights.len(), SLOT_WORDS);
    for (i, &k) in weights.iter().enumerate() {
        let want = if i == SLOT_CHECK {
            1
        } else {
            CHECK_GOLDEN.wrapping_mul(2 * i as u32 + 1)
        };
        assert_eq!(k, want, "weight of word {i}");
    }
    // The kernel's sum over a slot Rust sealed comes to the target, and not after any change.
    let settings = Settings {
        rules: 0,
        pad_policy: 1,
        num_ubatches: 3,
        decode_threshold: 0,
        prefill_threshold: 0,
        graphs: 0,
        decode_query_len: 0,
    };
    let sum = |s: &Slot| {
        s.opaque
            .iter()
            .zip(&weights)
            .fold(0u32, |acc, (&w, &k)| acc.wrapping_add(w.wrapping_mul(k)))
    };
    for s in [
        Slot::new(9, &settings, 77, 5, 1 << 42, [1, 2, 1, 0, 2, 0, 0, 0]),
        Slot::marker(3, 12345),
    ] {
        assert_eq!(sum(&s), target);
        for i in 0..SLOT_WORDS {
            let mut t = s;
            t.opaque[i] ^= 0x100;
            assert_ne!(sum(&t), target, "a change of word {i} goes unseen");
        }
    }
    assert_eq!(target, slot::CHECK_TARGET);
}

#[test]
fn the_host_block_holds_header_array_and_slots() {
    assert_eq!(host_block_words(3), HOST_HEADER_WORDS + 3 + 3 * SLOT_WORDS);
    assert_eq!(host_slots_offset(3), HOST_HEADER_WORDS + 3);
    assert_eq!(host_array_offset(), HOST_HEADER_WORDS);
    // Every header word is named once; one warp writes them (lane i word i).
    let mut words = [
        HOST_SEQ,
        HOST_STATUS,
        HOST_SHOULD_UBATCH,
        HOST_SHOULD_DP_PAD,
        HOST_SYNCED_CUDAGRAPH_MODE,
        HOST_NUM_TOKENS_AFTER_PADDING_SELF,
        HOST_MAX_NUM_TOKENS_PADDED,
        HOST_MIN_NUM_TOKENS_UNPADDED,
        HOST_NUM_UBATCHES,
        HOST_LAST_RANK,
        HOST_SKEW,
        HOST_SKEW + 1,
        HOST_RULES,
        HOST_IDLE,
        HOST_EAGER,
        HOST_SKIP_DRAFTS,
        HOST_HAS_ARRAY,
        HOST_GRAPH_NUM_TOKENS,
        HOST_GRAPH_NUM_REQS,
        HOST_GRAPH_UNIFORM,
        HOST_GRAPH_MAX_QUERY_LEN,
        HOST_GRAPH_LORAS,
        HOST_AGREED_UNIFORM,
        HOST_AGREED_MAX_QUERY_LEN,
        HOST_MAX_NUM_REQS,
    ];
    words.sort_unstable();
    assert_eq!(words.to_vec(), (0..HOST_HEADER_WORDS).collect::<Vec<_>>());
}

#[test]
fn the_ptx_defines_the_entry_point() {
    let name = POSTPROCESS_KERNEL.to_str().unwrap();
    assert_eq!(
        POSTPROCESS_PTX
            .matches(&format!(".visible .entry {name}("))
            .count(),
        1
    );
    assert_eq!(POSTPROCESS_PTX_CSTR.to_bytes(), POSTPROCESS_PTX.as_bytes());
}
