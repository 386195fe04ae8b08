//! Stage measurements (DESIGN.md section 5: "measurements of each stage (pack, collective,
//! kernel, wait) ... kernel-argument pack vs stream memory ops, spin-poll vs event-sync
//! waiting, one vs two kernels"), built from `dpcoord::cuda` primitives and the library's
//! own PTX, outside the engine.
//!
//! Stages (no collective; each rank on its own):
//! - `stage_pack_kernel_sync`: the pack kernel (record as kernel arguments) + stream sync;
//! - `stage_pack_memops_sync`: 5 x `cuStreamWriteValue32` + stream sync (no kernel);
//! - `stage_pack_batch_memop_sync`: one `cuStreamBatchMemOp` of 5 writes + stream sync;
//! - `stage_post_kernel_spin`: the post-processing kernel on already-gathered records (64
//!   prepared record sets, rotated) + host spin on the mapped sequence word;
//! - `stage_post_kernel_sync`: the same, waiting with `cuStreamSynchronize`;
//! - `stage_post_kernel_event_sync`: the same, waiting with event record + `cuEventSynchronize`.
//!
//! Pipelines (pack -> `ncclAllGather` -> post -> wait, the library's sequence without its
//! checks; the timed region includes reading the decision words, as the library does):
//! - `pipeline_spin`: pack kernel, post kernel, spin on the sequence word (the library's way);
//! - `pipeline_event_sync`: ... event record + `cuEventSynchronize`, then read the host block;
//! - `pipeline_stream_sync`: ... `cuStreamSynchronize`, then read the host block;
//! - `pipeline_memop_spin`: `cuStreamBatchMemOp` pack (one kernel: the post kernel), spin;
//! - `pipeline_host_decide`: pack kernel, allgather, async copy of the records into mapped
//!   host memory + stream sync, `rules::decide` on the host (no post kernel).

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use dpcoord::cuda::{
    self, DeviceBuffer, DevicePtr, Event, Kernel, KernelArg, MappedHost, Module, StreamPtr,
};
use dpcoord::kernels as k;
use dpcoord::kernels::RECORD_WORDS;
use dpcoord::rules::{self, RankRecord};

use crate::{
    bail, compare, expect, flat_words, since, slot, step_plan, Ctx, Observed, Res, StepPlan,
};

/// Prepared record sets the post-processing stages rotate through.
const SETS: usize = 64;
/// The longest a spin wait may take before the benchmark calls it stuck.
const SPIN_LIMIT: Duration = Duration::from_secs(60);
/// Polls between two looks at the clock while spinning.
const POLLS_PER_CLOCK: u32 = 4096;

/// The kernels, buffers and host blocks of the stage measurements.
pub struct Kit {
    n: usize,
    rank: usize,
    pack: Kernel,
    post: Kernel,
    send: DeviceBuffer,
    recv: DeviceBuffer,
    out: DeviceBuffer,
    sets: DeviceBuffer,
    set_plans: Vec<StepPlan>,
    /// The post kernel's host block (header, array, record copy).
    host: MappedHost,
    /// Where `pipeline_host_decide` lands the gathered records.
    records_host: MappedHost,
    event: Event,
    seq: u32,
    // Declared last: dropped after its kernels.
    _module: Module,
}

impl Kit {
    /// Loads the library's PTX into the current context and prepares the record sets.
    pub fn new(n: usize, rank: usize, stream: StreamPtr) -> Res<Kit> {
        let module = Module::load(k::POSTPROCESS_PTX_CSTR)?;
        let kit = Kit {
            n,
            rank,
            pack: module.kernel(k::PACK_RECORD_KERNEL)?,
            post: module.kernel(k::POSTPROCESS_KERNEL)?,
            send: DeviceBuffer::new(RECORD_WORDS)?,
            recv: DeviceBuffer::new(RECORD_WORDS * n)?,
            out: DeviceBuffer::new(n)?,
            sets: DeviceBuffer::new(RECORD_WORDS * n * SETS)?,
            set_plans: (0..SETS)
                .map(|s| step_plan(0x5E70_0000_0000 + s as u64, n))
                .collect::<Res<Vec<_>>>()?,
            host: MappedHost::new(k::host_block_words(n))?,
            records_host: MappedHost::new(RECORD_WORDS * n)?,
            event: Event::new()?,
            seq: 0,
            _module: module,
        };
        for (s, p) in kit.set_plans.iter().enumerate() {
            for (r, rec) in p.records.iter().enumerate() {
                kit.write_words(slot(kit.set_ptr(s), r), &rec.to_words(), stream)?;
            }
        }
        cuda::synchronize(stream)?;
        let mut check = vec![0; RECORD_WORDS * n * SETS];
        cuda::copy_to_host(kit.sets.ptr(), &mut check)?;
        let want: Vec<i32> = kit
            .set_plans
            .iter()
            .flat_map(|p| flat_words(&p.records))
            .collect();
        if check != want {
            bail!("the prepared record sets did not reach the device intact");
        }
        Ok(kit)
    }

    fn set_ptr(&self, s: usize) -> DevicePtr {
        self.sets.ptr() + (s * self.n * RECORD_WORDS * 4) as u64
    }

    /// Enqueues the library's pack kernel writing `w` (5 int32) at `dst` on `stream`.
    pub fn write_words(
        &self,
        dst: DevicePtr,
        w: &[i32; RECORD_WORDS],
        stream: StreamPtr,
    ) -> Res<()> {
        let args = [
            dst.as_arg(),
            w[0].as_arg(),
            w[1].as_arg(),
            w[2].as_arg(),
            w[3].as_arg(),
            w[4].as_arg(),
        ];
        self.pack.launch(1, stream, &args)?;
        Ok(())
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Enqueues the post-processing kernel on `records` (n records) publishing `seq`.
    fn launch_post(
        &self,
        records: DevicePtr,
        pad_policy: i32,
        num_ubatches: i32,
        seq: u32,
        stream: StreamPtr,
    ) -> Res<()> {
        let (dp_size, dp_rank) = (self.n as i32, self.rank as i32);
        let (out, host) = (self.out.ptr(), self.host.device_ptr());
        let args = [
            records.as_arg(),
            dp_size.as_arg(),
            dp_rank.as_arg(),
            pad_policy.as_arg(),
            num_ubatches.as_arg(),
            out.as_arg(),
            host.as_arg(),
            seq.as_arg(),
        ];
        self.post.launch(k::BLOCK_THREADS, stream, &args)?;
        Ok(())
    }

    /// Spins on the mapped sequence word until it reads `seq`.
    fn spin(&self, seq: u32) -> Res<()> {
        let start = Instant::now();
        let mut polls: u32 = 0;
        loop {
            if self.host.load(k::HOST_SEQ) as u32 == seq {
                fence(Ordering::Acquire);
                return Ok(());
            }
            polls = polls.wrapping_add(1);
            if polls % POLLS_PER_CLOCK == 0 && start.elapsed() > SPIN_LIMIT {
                bail!(
                    "spin wait: sequence word still {} after {SPIN_LIMIT:?}, waiting for {seq}",
                    self.host.load(k::HOST_SEQ)
                );
            }
            std::hint::spin_loop();
        }
    }

    /// The decision words of the host block, as the library reads them after its wait.
    fn header(&self) -> [i32; k::HOST_HEADER_WORDS] {
        std::array::from_fn(|i| self.host.load(i))
    }

    /// Checks the host block (published as `seq`) and the device array against
    /// `rules::decide` on `records`.
    #[allow(clippy::too_many_arguments)]
    fn check_post(
        &self,
        variant: &str,
        step: u64,
        seq: u32,
        header: &[i32; k::HOST_HEADER_WORDS],
        records: &[RankRecord],
        pad_policy: i32,
        num_ubatches: i32,
        stream: StreamPtr,
    ) -> Res<()> {
        if header[k::HOST_SEQ] as u32 != seq {
            bail!(
                "{variant}, step {step:#x}: the host block holds sequence {} after the wait for {seq}",
                header[k::HOST_SEQ]
            );
        }
        if header[k::HOST_STATUS] != k::STATUS_OK {
            bail!(
                "WRONG RESULT: {variant}, step {step:#x}: the kernel flagged status {} on valid \
                 records {records:?}",
                header[k::HOST_STATUS]
            );
        }
        let want = expect(records, self.rank, pad_policy, num_ubatches)?;
        let host_array: Vec<i32> = (0..self.n)
            .map(|r| self.host.load(k::host_array_offset() + r))
            .collect();
        cuda::synchronize(stream)?;
        let mut device_array = vec![0; self.n];
        cuda::copy_to_host(self.out.ptr(), &mut device_array)?;
        let got = Observed {
            should_ubatch: header[k::HOST_SHOULD_UBATCH] != 0,
            should_dp_pad: header[k::HOST_SHOULD_DP_PAD] != 0,
            synced_cudagraph_mode: header[k::HOST_SYNCED_CUDAGRAPH_MODE],
            num_tokens_after_padding_self: header[k::HOST_NUM_TOKENS_AFTER_PADDING_SELF],
            max_num_tokens_padded: header[k::HOST_MAX_NUM_TOKENS_PADDED],
            min_num_tokens_unpadded: header[k::HOST_MIN_NUM_TOKENS_UNPADDED],
            arrays: vec![("host", host_array), ("device", device_array)],
        };
        compare(variant, step, &got, &want)
    }

    /// Checks that the send buffer holds `w` (after the stream's work).
    fn check_send(&self, variant: &str, step: u64, w: &[i32; RECORD_WORDS]) -> Res<()> {
        let mut got = [0; RECORD_WORDS];
        cuda::copy_to_host(self.send.ptr(), &mut got)?;
        if &got != w {
            bail!("WRONG RESULT: {variant}, step {step:#x}: send buffer {got:?}, packed {w:?}");
        }
        Ok(())
    }

    /// `(address, value)` of the five word writes that pack `w` into the send buffer.
    fn memop_writes(&self, w: &[i32; RECORD_WORDS]) -> [(DevicePtr, u32); RECORD_WORDS] {
        std::array::from_fn(|i| (self.send.ptr() + (4 * i) as u64, w[i] as u32))
    }
}

// ---- pack ----

pub fn pack_kernel_sync(ctx: &mut Ctx, step: u64) -> Res<u64> {
    let p = step_plan(step, ctx.n)?;
    let w = p.records[ctx.rank].to_words();
    let s = ctx.s();
    let t0 = Instant::now();
    ctx.kit.write_words(ctx.kit.send.ptr(), &w, s)?;
    cuda::synchronize(s)?;
    let ns = since(t0);
    ctx.kit.check_send(&ctx.variant, step, &w)?;
    Ok(ns)
}

pub fn pack_memops_sync(ctx: &mut Ctx, step: u64) -> Res<u64> {
    let p = step_plan(step, ctx.n)?;
    let w = p.records[ctx.rank].to_words();
    let writes = ctx.kit.memop_writes(&w);
    let s = ctx.s();
    let t0 = Instant::now();
    for (addr, value) in writes {
        cuda::stream_write_u32(s, addr, value)?;
    }
    cuda::synchronize(s)?;
    let ns = since(t0);
    ctx.kit.check_send(&ctx.variant, step, &w)?;
    Ok(ns)
}

pub fn pack_batch_memop_sync(ctx: &mut Ctx, step: u64) -> Res<u64> {
    let p = step_plan(step, ctx.n)?;
    let w = p.records[ctx.rank].to_words();
    let writes = ctx.kit.memop_writes(&w);
    let s = ctx.s();
    let t0 = Instant::now();
    cuda::stream_write_u32_batch(s, &writes)?;
    cuda::synchronize(s)?;
    let ns = since(t0);
    ctx.kit.check_send(&ctx.variant, step, &w)?;
    Ok(ns)
}

/// Whether the device takes `cuStreamWriteValue32`, checked end to end.
pub fn probe_write_value(ctx: &mut Ctx) -> Res<()> {
    let s = ctx.s();
    let w = [11, 22, 33, 44, 55];
    for (addr, value) in ctx.kit.memop_writes(&w) {
        cuda::stream_write_u32(s, addr, value)?;
    }
    cuda::synchronize(s)?;
    ctx.kit.check_send("cuStreamWriteValue32 probe", 0, &w)
}

/// Whether the device takes `cuStreamBatchMemOp` writes, checked end to end.
pub fn probe_batch_memop(ctx: &mut Ctx) -> Res<()> {
    let s = ctx.s();
    let w = [66, 77, 88, 99, 111];
    cuda::stream_write_u32_batch(s, &ctx.kit.memop_writes(&w))?;
    cuda::synchronize(s)?;
    ctx.kit.check_send("cuStreamBatchMemOp probe", 0, &w)
}

// ---- post-processing kernel on prepared records ----

enum Wait {
    Spin,
    StreamSync,
    EventSync,
}

fn wait(ctx: &Ctx, how: &Wait, seq: u32) -> Res<()> {
    let s = ctx.s();
    match how {
        Wait::Spin => ctx.kit.spin(seq),
        Wait::StreamSync => Ok(cuda::synchronize(s)?),
        Wait::EventSync => {
            ctx.kit.event.record(s)?;
            Ok(ctx.kit.event.synchronize()?)
        }
    }
}

fn post_only(ctx: &mut Ctx, step: u64, how: Wait) -> Res<u64> {
    let set = (step % SETS as u64) as usize;
    let records = ctx.kit.set_ptr(set);
    let (policy, nub) = {
        let p = &ctx.kit.set_plans[set];
        (p.pad_policy, p.num_ubatches)
    };
    let seq = ctx.kit.next_seq();
    let s = ctx.s();
    let t0 = Instant::now();
    ctx.kit.launch_post(records, policy, nub, seq, s)?;
    wait(ctx, &how, seq)?;
    let header = ctx.kit.header();
    let ns = since(t0);
    let p = &ctx.kit.set_plans[set];
    ctx.kit
        .check_post(&ctx.variant, step, seq, &header, &p.records, policy, nub, s)?;
    Ok(ns)
}

pub fn post_kernel_spin(ctx: &mut Ctx, step: u64) -> Res<u64> {
    post_only(ctx, step, Wait::Spin)
}

pub fn post_kernel_sync(ctx: &mut Ctx, step: u64) -> Res<u64> {
    post_only(ctx, step, Wait::StreamSync)
}

pub fn post_kernel_event_sync(ctx: &mut Ctx, step: u64) -> Res<u64> {
    post_only(ctx, step, Wait::EventSync)
}

// ---- whole pipelines ----

enum Pack {
    Kernel,
    BatchMemop,
}

fn pipeline(ctx: &mut Ctx, step: u64, pack: Pack, how: Wait) -> Res<u64> {
    let p = step_plan(step, ctx.n)?;
    let w = p.records[ctx.rank].to_words();
    let writes = ctx.kit.memop_writes(&w);
    let seq = ctx.kit.next_seq();
    let s = ctx.s();
    let (send, recv) = (ctx.kit.send.ptr(), ctx.kit.recv.ptr());
    let t0 = Instant::now();
    match pack {
        Pack::Kernel => ctx.kit.write_words(send, &w, s)?,
        Pack::BatchMemop => cuda::stream_write_u32_batch(s, &writes)?,
    }
    ctx.nccl
        .all_gather_i32(send, recv, RECORD_WORDS, ctx.comm, s)?;
    ctx.kit
        .launch_post(recv, p.pad_policy, p.num_ubatches, seq, s)?;
    wait(ctx, &how, seq)?;
    let header = ctx.kit.header();
    let ns = since(t0);
    ctx.kit.check_post(
        &ctx.variant,
        step,
        seq,
        &header,
        &p.records,
        p.pad_policy,
        p.num_ubatches,
        s,
    )?;
    Ok(ns)
}

pub fn pipeline_spin(ctx: &mut Ctx, step: u64) -> Res<u64> {
    pipeline(ctx, step, Pack::Kernel, Wait::Spin)
}

pub fn pipeline_event_sync(ctx: &mut Ctx, step: u64) -> Res<u64> {
    pipeline(ctx, step, Pack::Kernel, Wait::EventSync)
}

pub fn pipeline_stream_sync(ctx: &mut Ctx, step: u64) -> Res<u64> {
    pipeline(ctx, step, Pack::Kernel, Wait::StreamSync)
}

pub fn pipeline_memop_spin(ctx: &mut Ctx, step: u64) -> Res<u64> {
    pipeline(ctx, step, Pack::BatchMemop, Wait::Spin)
}

/// No post kernel: the gathered records are copied into mapped host memory and decided on
/// the host with `rules::decide`.
pub fn pipeline_host_decide(ctx: &mut Ctx, step: u64) -> Res<u64> {
    let p = step_plan(step, ctx.n)?;
    let w = p.records[ctx.rank].to_words();
    let s = ctx.s();
    let n = ctx.n;
    let (send, recv) = (ctx.kit.send.ptr(), ctx.kit.recv.ptr());
    let landing = ctx.kit.records_host.device_ptr();
    let t0 = Instant::now();
    ctx.kit.write_words(send, &w, s)?;
    ctx.nccl
        .all_gather_i32(send, recv, RECORD_WORDS, ctx.comm, s)?;
    cuda::copy_device_async(landing, recv, RECORD_WORDS * n, s)?;
    cuda::synchronize(s)?;
    let host = &ctx.kit.records_host;
    let records: Vec<RankRecord> = (0..n)
        .map(|r| RankRecord::from_words(std::array::from_fn(|i| host.load(r * RECORD_WORDS + i))))
        .collect();
    let decision = rules::decide(
        &records,
        ctx.rank as i32,
        p.pad_policy,
        p.num_ubatches,
        None,
    );
    let ns = since(t0);
    if records != p.records {
        bail!(
            "WRONG RESULT: {}, step {step:#x}: gathered {records:?}, sent {:?}",
            ctx.variant,
            p.records
        );
    }
    let want = expect(&p.records, ctx.rank, p.pad_policy, p.num_ubatches)?;
    if decision? != want.decision {
        bail!(
            "WRONG RESULT: {}, step {step:#x}: host decision differs from rules::decide",
            ctx.variant
        );
    }
    Ok(ns)
}

// ---- the library's per-call checks, without any device work ----

/// What `coordinator::coordinate` does on the host before its first enqueue, timed alone:
/// `make_record`, the three NCCL queries, the stream's context (with the cached hint),
/// the capture check and making the context current.
pub fn call_checks(ctx: &mut Ctx, step: u64) -> Res<u64> {
    let p = step_plan(step, ctx.n)?;
    let req = p.requests[ctx.rank];
    let s = ctx.s();
    let known = cuda::Context::of_stream(s, ctx.nccl.comm_cu_device(ctx.comm)?, None)?;
    let t0 = Instant::now();
    let record = rules::make_record(&req)?;
    let n = ctx.nccl.comm_count(ctx.comm)?;
    let rank = ctx.nccl.comm_user_rank(ctx.comm)?;
    let device = ctx.nccl.comm_cu_device(ctx.comm)?;
    let c = cuda::Context::of_stream(s, device, Some(known))?;
    cuda::check_not_capturing(s)?;
    let guard = c.enter()?;
    drop(guard);
    let ns = since(t0);
    if record != p.records[ctx.rank] || n != ctx.n as i32 || rank != ctx.rank as i32 {
        bail!(
            "WRONG RESULT: {}: the checks disagree with the plan",
            ctx.variant
        );
    }
    Ok(ns)
}

/// `cuStreamIsCapturing` alone (the capture check of every blocking call).
pub fn capture_check(ctx: &mut Ctx, _step: u64) -> Res<u64> {
    let s = ctx.s();
    let t0 = Instant::now();
    cuda::check_not_capturing(s)?;
    Ok(since(t0))
}
