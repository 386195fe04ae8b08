//! The V2 graph table at the C boundary (0.3): `dp_graph_table` describes the caller's captured
//! CUDA graphs; `dp_graphs_create` validates, indexes and hashes a copy once (`dp_graphs`), which
//! every V2 call then takes by pointer (the host path through `dp_decide_options.graphs`, the
//! coordinator and the host group through their `set_graphs`, the reuse functions directly).

use std::mem::{offset_of, size_of};
use std::sync::Arc;

use super::{
    boundary, check_ptr, dp_status, init_struct_size, read_field, read_struct_size, write_field,
    write_out, OwnedHandle,
};
use crate::error::{invalid, Error, Result};
use crate::rules::{Graph, GraphTable, DP_MAX_GRAPHS};

/// The caller's captured CUDA graphs as data (V2 rules, 0.3): `num_graphs` entries at `graphs`,
/// each one `dp_graph` as vLLM's `CudaGraphManager` holds them (uniform-decode graphs with
/// `uniform_token_count` set and `num_ubatches` 1; token-keyed graphs with no uniform count;
/// microbatched twins with `num_ubatches` > 1 beside their originals), and the runner's
/// `decode_query_len` (1 + the speculative tokens). Initialise with `dp_graph_table_init`; read
/// only by `dp_graphs_create`, which copies it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dp_graph_table {
    /// `sizeof(dp_graph_table)` as the caller compiled it (set by `dp_graph_table_init`).
    pub struct_size: u32,
    /// `num_graphs` graphs (NULL only when `num_graphs` is 0); borrowed for the call only.
    pub graphs: *const Graph,
    /// Entries at `graphs`, 0..=`DP_MAX_GRAPHS` (0: no graph, vLLM's cudagraph mode NONE).
    pub num_graphs: i32,
    /// The uniform decode query length of the runner, >= 1 (default 1).
    pub decode_query_len: i32,
}

/// The smallest `struct_size` accepted: the whole 0.3 struct (its first version).
const TABLE_MIN_SIZE: usize = size_of::<dp_graph_table>();

/// Invokes `$visit!` with every field of `dp_graph_table` after `struct_size`.
macro_rules! table_fields {
    ($visit:ident) => {
        $visit!(graphs, num_graphs, decode_query_len)
    };
}

/// The defaults of `dp_graph_table_init`: no graph, decode query length 1.
fn default_table() -> dp_graph_table {
    dp_graph_table {
        struct_size: size_of::<dp_graph_table>() as u32,
        graphs: std::ptr::null(),
        num_graphs: 0,
        decode_query_len: 1,
    }
}

/// Fills the caller's `*t` with the defaults (no graph, `decode_query_len` 1) and
/// `struct_size = size`, writing only inside its first `min(size, sizeof)` bytes. Call it
/// through the header's `dp_graph_table_init(t)`, which passes `sizeof(*t)`. `t` must be
/// aligned to 8 bytes. Local, thread-safe; a NULL or misaligned `t`, or a `size` below the 0.3
/// struct, writes nothing and leaves a message for `dp_last_error`.
#[no_mangle]
pub extern "C" fn dp_graph_table_init_sized(t: *mut dp_graph_table, size: usize) {
    boundary(|| {
        check_ptr(t.cast_const(), "t")?;
        let struct_size = init_struct_size(size, TABLE_MIN_SIZE, "dp_graph_table")?;
        let base = t.cast::<u8>();
        let defaults = default_table();
        macro_rules! write {
            ($($field:ident),+) => {
                // SAFETY: `t` is non-NULL and aligned (checked) and the C caller promises
                // `size` writable bytes there; `write_field` writes only inside them.
                unsafe {
                    write_field(|o: &dp_graph_table| o.struct_size, base, size, 0, struct_size);
                    $(write_field(
                        |o: &dp_graph_table| o.$field,
                        base,
                        size,
                        offset_of!(dp_graph_table, $field),
                        defaults.$field,
                    );)+
                }
            };
        }
        table_fields!(write);
        Ok(())
    });
}

/// Rust callers' counterpart of the header's inline `dp_graph_table_init(t)`.
pub fn dp_graph_table_init(t: *mut dp_graph_table) {
    dp_graph_table_init_sized(t, size_of::<dp_graph_table>());
}

/// A validated, indexed copy of a graph table (opaque), made by `dp_graphs_create` and shared
/// by every V2 call given it. Owned by the caller until `dp_graphs_destroy`; a coordinator or
/// host group given it keeps its own reference, so destroying it afterwards is safe.
pub struct dp_graphs {
    _opaque: [u8; 0],
}

impl OwnedHandle for dp_graphs {
    type Owned = Arc<GraphTable>;
}

/// Validates `*t` (every graph named by index, field and value when vLLM could not have built
/// it: see docs/ARCHITECTURE.md, "The graph table"), copies and indexes it for dispatch, hashes
/// it (ranks with different tables fail together), and writes the new handle to `*out`.
///
/// Local, thread-safe; allocates (call it once, at start-up, not per step). `*out` is written
/// only on success. Returns `DP_OK` or `DP_ERR_INVALID_ARGUMENT` (NULL or misaligned pointers,
/// `struct_size`, `num_graphs` out of range, or a graph vLLM could not have built).
#[no_mangle]
pub extern "C" fn dp_graphs_create(
    t: *const dp_graph_table,
    out: *mut *mut dp_graphs,
) -> dp_status {
    boundary(|| {
        let table = read_table(t)?;
        check_ptr(out.cast_const(), "out")?;
        write_out(out, dp_graphs::into_raw(Arc::new(table)));
        Ok(())
    })
}

/// Frees a handle from `dp_graphs_create` (NULL: nothing to do). Local. Coordinators and host
/// groups given the handle keep their own reference; a call still using it on another thread
/// must have returned. Returns `DP_OK` or `DP_ERR_INVALID_ARGUMENT` (a misaligned pointer).
#[no_mangle]
pub extern "C" fn dp_graphs_destroy(g: *mut dp_graphs) -> dp_status {
    boundary(|| {
        if g.is_null() {
            return Ok(());
        }
        dp_graphs::borrow(g, "g")?;
        // SAFETY: checked above; the C caller promises a handle from dp_graphs_create that is
        // destroyed once, with no call using it on another thread.
        unsafe { dp_graphs::drop_raw(g) };
        Ok(())
    })
}

/// The table behind a nullable handle (`name` is the parameter's name in errors).
pub(crate) fn table_of<'a>(g: *const dp_graphs, name: &str) -> Result<Option<&'a GraphTable>> {
    if g.is_null() {
        return Ok(None);
    }
    Ok(Some(dp_graphs::borrow(g.cast_mut(), name)?.as_ref()))
}

/// The table behind a nullable handle as a reference of the caller's own, for a transport that
/// keeps it past the handle's `dp_graphs_destroy` (`name` is the parameter's name in errors).
pub(crate) fn shared_table(g: *const dp_graphs, name: &str) -> Result<Option<Arc<GraphTable>>> {
    if g.is_null() {
        return Ok(None);
    }
    Ok(Some(Arc::clone(dp_graphs::borrow(g.cast_mut(), name)?)))
}

/// Reads and validates a caller's `dp_graph_table` into a [`GraphTable`].
fn read_table(t: *const dp_graph_table) -> Result<GraphTable> {
    let base = t.cast::<u8>();
    let size = read_struct_size(base, "t", "dp_graph_table", TABLE_MIN_SIZE)?;
    check_ptr(t, "t")?;
    let mut table = default_table();
    macro_rules! read {
        ($($field:ident),+) => {$(
            if let Some(v) = read_field(
                |o: &dp_graph_table| o.$field,
                base,
                size,
                offset_of!(dp_graph_table, $field),
            ) {
                table.$field = v;
            }
        )+};
    }
    table_fields!(read);
    let n = table.num_graphs;
    if n < 0 || n as usize > DP_MAX_GRAPHS {
        return Err(invalid!(
            "t->num_graphs = {n} must be in 0..={DP_MAX_GRAPHS}"
        ));
    }
    let graphs: &[Graph] = if n == 0 {
        &[]
    } else {
        check_ptr(table.graphs, "t->graphs")?;
        // SAFETY: non-NULL and aligned (checked); the C caller promises `num_graphs` readable
        // graphs there for the call (the table is copied before it returns).
        unsafe { std::slice::from_raw_parts(table.graphs, n as usize) }
    };
    GraphTable::new(graphs, table.decode_query_len)
        .map_err(|e| Error::new(e.kind, format!("t->{}", e.message)))
}
