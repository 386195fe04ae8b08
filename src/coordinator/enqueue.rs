//! The device work of a `begin`: the slot written to mapped memory, the allgather (the first
//! one on a helper thread the wait can leave), the post kernel.

use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{cancelled_error, lock, Coordinator, Flight, GpuState, Inner, Step};
use crate::cuda::{self, Context, DeviceBuffer, DevicePtr, PostArgs, StreamHandle};
use crate::diag;
use crate::error::{Error, ErrorKind, Result};
use crate::kernels::{self as k, SLOT_WORDS};

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
    /// `stream` if the coordinator can use it, else its own stream and why not (an
    /// invalid-argument error, for the marker). Other failures of the checks are errors.
    pub(super) fn usable_stream(
        &self,
        inner: &mut Inner,
        stream: StreamHandle,
    ) -> Result<(StreamHandle, Option<Error>)> {
        let gpu = inner
            .gpu
            .as_ref()
            .expect("a coordinator of the GPU path has GPU state");
        let own = gpu.stream.handle();
        let unusable = |e: Error| match e.kind {
            ErrorKind::InvalidArgument => Ok((own, Some(e))),
            _ => Err(e),
        };
        if inner.checked_stream != Some(stream) {
            if !gpu.ctx.owns(stream)? {
                // Name the devices when they differ; else it is another context of the device.
                if let Err(e) = Context::of_stream(stream, self.device) {
                    return unusable(e);
                }
                return unusable(Error::new(
                    ErrorKind::InvalidArgument,
                    "stream belongs to another CUDA context than the one current (or primary) \
                     on the communicator's device when the coordinator was created",
                ));
            }
            inner.checked_stream = Some(stream);
        }
        match cuda::check_not_capturing(stream) {
            Ok(()) => Ok((stream, None)),
            Err(e) => unusable(e),
        }
    }

    /// Host write of the slot (`step.slot`, which carries the next sequence number), allgather,
    /// post kernel on `stream` (checked by
    /// [`Coordinator::usable_stream`]). A failure before anything is enqueued leaves the
    /// coordinator usable; one after breaks it.
    pub(super) fn enqueue(
        &self,
        inner: &mut Inner,
        stream: StreamHandle,
        step: &Step,
    ) -> Result<Flight> {
        let _range = diag::range(c"dp_coordinator_enqueue", self.dp_rank, step.step_id);
        let seq = step.slot.seq();
        let connected = inner.connected;
        let gpu = inner
            .gpu
            .as_mut()
            .expect("a coordinator of the GPU path has GPU state");
        let _current = gpu.ctx.enter()?;
        gpu.send_host
            .store(0, bytemuck::cast_slice(&step.slot.opaque));
        // The stores reach memory before the launch below makes the GPU read them.
        fence(Ordering::SeqCst);
        inner.seq = seq;
        let marked = stream.is_special();
        let result = self
            .enqueue_device_work(gpu, stream, seq, connected, step)
            .and_then(|()| match marked {
                // Behind this begin's work, on the caller's thread (see Flight::Exchange).
                true => gpu.event.record(stream).map(|()| gpu.event_recorded = true),
                false => Ok(()),
            });
        match result {
            Ok(()) => {
                inner.connected = true;
                Ok(Flight::Exchange {
                    seq,
                    stream,
                    marked,
                })
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
            // On the coordinator's own stream, ordered after the caller's stream as it is
            // now, and the caller's stream after it: events recorded and waited for on this
            // (the caller's) thread, so a per-thread stream is the caller's.
            let own = gpu.stream.handle();
            gpu.order.record(stream)?;
            gpu.order.wait_on(own)?;
            self.first_all_gather(gpu, send, recv, own, step.deadline, step.start)?;
            gpu.order.record(own)?;
            gpu.order.wait_on(stream)?;
        }
        let args = PostArgs {
            slots: recv,
            dp_size: self.dp_size,
            dp_rank: self.dp_rank,
            seq,
            device_out: gpu.device_out.ptr(),
            host: gpu.host.device_ptr(),
            table: gpu.graphs.as_ref().map_or(0, DeviceBuffer::ptr),
        };
        gpu.post
            .launch_post(block_threads(self.dp_size), stream, &args)
    }

    /// The first `ncclAllGather` of this coordinator, on a helper thread the wait can leave,
    /// on `stream` (the coordinator's own: the helper's per-thread stream would be another).
    /// While the helper is inside NCCL the state is not freed; once it left, what it
    /// enqueued is on `stream`, which the graveyard waits for.
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
        let helper = Arc::clone(&gpu.helper);
        let result = Arc::clone(&connect);
        shared.helper_inside.store(true, Ordering::SeqCst);
        helper.store(true, Ordering::SeqCst);
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
                helper.store(false, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            self.shared.helper_inside.store(false, Ordering::SeqCst);
            gpu.helper.store(false, Ordering::SeqCst);
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
                return Err(cancelled_error());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the first ncclAllGather on this communicator (NCCL connects to the \
                         peers inside it) did not return within timeout_ms = {} ms: a rank did \
                         not call, or is stuck; a dpcoord helper thread is left inside NCCL, \
                         where only ncclCommAbort frees it (the coordinator's buffers are freed \
                         once it left): abort the communicator on every rank, then destroy the \
                         coordinator",
                        deadline.map_or(0, |d| (d - start).as_millis())
                    ),
                ));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}
