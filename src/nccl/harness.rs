//! Communicator set-up and bare collectives for dpcoord's own GPU benchmark (the `testing`
//! feature): the library never calls these. Resolved with the library's own table, from the
//! same NCCL, and left out (`None`) when that NCCL lacks any of them.

use std::ffi::{c_int, c_void};

use super::{check_comm, CommHandle, CommPtr, Nccl, StreamPtr, NCCL_INT32, NCCL_SUCCESS};
use crate::cuda::StreamHandle;
use crate::dl::symbol_table;
use crate::error::{Error, ErrorKind, Result};

// ncclRedOp_t ncclSum.
const NCCL_SUM: c_int = 0;

/// `ncclUniqueId`: 128 opaque bytes that rank 0 creates and every rank passes to init.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    /// The bytes, as NCCL wrote them.
    pub internal: [u8; 128],
}

type GetUniqueIdFn = unsafe extern "C" fn(*mut UniqueId) -> c_int;
type CommInitRankFn = unsafe extern "C" fn(*mut CommPtr, c_int, UniqueId, c_int) -> c_int;
type CommDestroyFn = unsafe extern "C" fn(CommPtr) -> c_int;
type AllReduceFn = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    c_int,
    c_int,
    CommPtr,
    StreamPtr,
) -> c_int;

symbol_table! {
    /// The set-up entry points, with their nccl.h signatures (`ncclUniqueId` by value as the
    /// 128-byte `repr(C)` struct it is; `ncclRedOp_t` and `ncclDataType_t` are `int`).
    #[derive(Debug)]
    pub(crate) struct Harness {
        required get_unique_id: GetUniqueIdFn = c"ncclGetUniqueId";
        required comm_init_rank: CommInitRankFn = c"ncclCommInitRank";
        required comm_destroy: CommDestroyFn = c"ncclCommDestroy";
        required all_reduce: AllReduceFn = c"ncclAllReduce";
    }
}

impl Nccl {
    /// Communicator set-up for benchmarks and tests (NCCL always has these functions).
    pub(crate) fn harness(&self) -> Result<&Harness> {
        self.harness.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::LibraryUnavailable,
                "this NCCL lacks ncclGetUniqueId/ncclCommInitRank/ncclCommDestroy/ncclAllReduce",
            )
        })
    }

    fn checked(&self, func: &str, rc: c_int, comm: CommPtr) -> Result<()> {
        if rc == NCCL_SUCCESS {
            Ok(())
        } else {
            Err(self.failure(func, rc, comm))
        }
    }
}

impl Harness {
    /// `ncclGetUniqueId`: a new id for rank 0 to share.
    pub(crate) fn unique_id(&self, nccl: &Nccl) -> Result<UniqueId> {
        let mut id = UniqueId { internal: [0; 128] };
        nccl.checked(
            "ncclGetUniqueId",
            // SAFETY: ncclGetUniqueId writes 128 bytes into a valid out pointer.
            unsafe { (self.get_unique_id)(&mut id) },
            std::ptr::null_mut(),
        )?;
        Ok(id)
    }

    /// `ncclCommInitRank` on the current CUDA device: blocks until every rank joined.
    pub(crate) fn init_rank(
        &self,
        nccl: &Nccl,
        nranks: i32,
        id: UniqueId,
        rank: i32,
    ) -> Result<CommHandle> {
        let mut comm: CommPtr = std::ptr::null_mut();
        // SAFETY: writes the new communicator into a valid out pointer; id is passed by value.
        let rc = unsafe { (self.comm_init_rank)(&mut comm, nranks, id, rank) };
        nccl.checked("ncclCommInitRank", rc, std::ptr::null_mut())?;
        Ok(CommHandle(comm))
    }

    /// `ncclCommDestroy`. `comm` must be a live communicator of this NCCL, used no more.
    pub(crate) fn destroy(&self, nccl: &Nccl, comm: CommHandle) -> Result<()> {
        let comm = comm.0;
        check_comm("ncclCommDestroy", comm)?;
        // SAFETY: comm is live (the caller's guarantee) and not used afterwards.
        nccl.checked(
            "ncclCommDestroy",
            unsafe { (self.comm_destroy)(comm) },
            comm,
        )
    }

    /// `ncclAllReduce` (sum) of `count` int32 on `stream`. `comm` must be live; `send` and
    /// `recv` device buffers of `count` int32.
    pub(crate) fn all_reduce_sum_i32(
        &self,
        nccl: &Nccl,
        bufs: (u64, u64),
        count: usize,
        comm: CommHandle,
        stream: StreamHandle,
    ) -> Result<()> {
        let (comm, stream) = (comm.0, stream.as_raw());
        check_comm("ncclAllReduce", comm)?;
        // SAFETY: comm is live and the buffers hold `count` int32 (the caller's guarantee).
        let rc = unsafe {
            (self.all_reduce)(
                bufs.0 as *const c_void,
                bufs.1 as *mut c_void,
                count,
                NCCL_INT32,
                NCCL_SUM,
                comm,
                stream,
            )
        };
        nccl.checked("ncclAllReduce", rc, comm)
    }
}
