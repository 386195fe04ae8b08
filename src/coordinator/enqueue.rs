//! The device work of a `begin`: the slot written to mapped memory, the allgather (the first
//! one on a helper thread the wait can leave), the post kernel.

use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{cancelled_error, lock, Coordinator, Flight, GpuState, Inner, Step};
use crate::cuda::{self, Context, DevicePtr, PostArgs, StreamHandle};
use crate::diag;
use crate::error::{Error, ErrorKind, Result};
use crate::kernels as k;
use crate::slot::{self, SLOT_WORDS};

/// The first `ncclAllGather`, on a helper thread: its result, once it returned.
pub(super) struct Connect {
    code: Mutex<Option<i32>>,
}

/// Threads of the post kernel: one warp per 32 ranks, at most [`k::BLOCK_THREADS`] (a small
/// communicator gets one warp: fewer barriers and a faster launch).
pub(crate) fn block_threads(dp_size: i32) -> u32 {
    let warps = (dp_size.max(1) as u32).div_ceil(32);
    (warps * 32).min(k::BLOCK_THREADS)
}

impl Coordinator {
    /// Host write of the slot, allgather, post kernel. A failure before anything is
    /// enqueued leaves the coordinator usable; one after breaks it.
    pub(super) fn enqueue(
        &self,
        inner: &mut Inner,
        stream: StreamHandle,
        step: &Step,
    ) -> Result<Flight> {
        let _range = diag::range(c"dp_coordinator_enqueue", self.dp_rank, step.step_id);
        let gpu = inner
            .gpu
            .as_ref()
            .expect("a coordinator of the GPU path has GPU state");
        if inner.checked_stream != Some(stream) {
            if !gpu.ctx.owns(stream)? {
                // Name the devices when they differ; else it is another context of the device.
                Context::of_stream(stream, self.device)?;
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "stream belongs to another CUDA context than the one current (or primary) \
                     on the communicator's device when the coordinator was created",
                ));
            }
            inner.checked_stream = Some(stream);
        }
        cuda::check_not_capturing(stream)?;
        let seq = inner.seq.wrapping_add(1).max(1);
        let connected = inner.connected;
        let gpu = inner.gpu.as_mut().expect("state was just ensured");
        let _current = gpu.ctx.enter()?;
        gpu.send_host.store(
            0,
            &slot::slot_words(seq, step.step_id, step.record.to_words()),
        );
        // The stores reach memory before the launch below makes the GPU read them.
        fence(Ordering::SeqCst);
        inner.seq = seq;
        let result = self.enqueue_device_work(gpu, stream, seq, connected, step);
        match result {
            Ok(()) => {
                inner.connected = true;
                Ok(Flight::Exchange { seq, stream })
            }
            Err(e) => {
                let gpu = inner.gpu.as_mut().expect("state exists");
                gpu.record_pending(stream);
                inner.broken = Some(e.clone());
                Err(e)
            }
        }
    }

    pub(super) fn enqueue_device_work(
        &self,
        gpu: &mut GpuState,
        stream: StreamHandle,
        seq: u32,
        connected: bool,
        step: &Step,
    ) -> Result<()> {
        if let Some(d) = &gpu.send_device {
            cuda::copy_host_to_device_async(d.ptr(), &gpu.send_host, 0, SLOT_WORDS, stream)?;
        }
        let (send, recv) = (gpu.send_ptr(), gpu.recv.ptr());
        if connected {
            self.nccl.all_gather_i32_until(
                send,
                recv,
                SLOT_WORDS,
                self.comm,
                stream,
                step.deadline,
            )?;
        } else {
            self.first_all_gather(gpu, send, recv, stream, step.deadline, step.start)?;
        }
        let args = PostArgs {
            slots: recv,
            dp_size: self.dp_size,
            dp_rank: self.dp_rank,
            pad_policy: step.pad_policy,
            num_ubatches: step.num_ubatches,
            seq,
            device_out: gpu.device_out.ptr(),
            host: gpu.host.device_ptr(),
        };
        gpu.post
            .launch_post(block_threads(self.dp_size), stream, &args)
    }

    /// The first `ncclAllGather` of this coordinator, on a helper thread the wait can leave.
    pub(super) fn first_all_gather(
        &self,
        gpu: &mut GpuState,
        send: DevicePtr,
        recv: DevicePtr,
        stream: StreamHandle,
        deadline: Option<Instant>,
        start: Instant,
    ) -> Result<()> {
        let connect = Arc::new(Connect {
            code: Mutex::new(None),
        });
        let (nccl, comm, ctx) = (self.nccl, self.comm, gpu.ctx);
        let shared = Arc::clone(&self.shared);
        let result = Arc::clone(&connect);
        shared.helper_inside.store(true, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("dpcoord-connect".into())
            .spawn(move || {
                let code = match ctx.enter() {
                    Ok(_current) => nccl.all_gather_code(send, recv, SLOT_WORDS, comm, stream),
                    Err(_) => -1,
                };
                // From here on the communicator is never touched: the caller may abort it.
                *lock(&result.code) = Some(code);
                shared.helper_inside.store(false, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            self.shared.helper_inside.store(false, Ordering::SeqCst);
            return Err(Error::internal(format!(
                "could not start the thread for the first ncclAllGather: {e}"
            )));
        }
        loop {
            if let Some(code) = *lock(&connect.code) {
                if code == -1 {
                    return Err(Error::new(
                        ErrorKind::Cuda,
                        "the helper thread could not make the stream's CUDA context current",
                    ));
                }
                return match self.nccl.all_gather_outcome(code)? {
                    true => Ok(()),
                    false => self.nccl.wait_enqueued_until(self.comm, deadline),
                };
            }
            if self.shared.is_cancelled() {
                gpu.leak = true;
                return Err(cancelled_error());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                gpu.leak = true;
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the first ncclAllGather on this communicator (NCCL connects to the \
                         peers inside it) did not return within timeout_ms = {} ms: a rank did \
                         not call, or is stuck; a dpcoord helper thread is left inside NCCL, \
                         where only ncclCommAbort frees it: abort the communicator on every \
                         rank, then destroy the coordinator",
                        deadline.map_or(0, |d| (d - start).as_millis())
                    ),
                ));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}
