//! The step protocol: publish this rank's slot, wait for every rank's, copy them out, check
//! and decide on the copies; and the failure word that makes every rank fail fast after a
//! failed wait or a damaged slot.

use std::sync::atomic::Ordering;

use super::fork::is_opener;
use super::identity::{Identity, Presence};
use super::segment::{LAYOUT_VERSION, MAGIC, SLOT_SIZE, STATE_JOINED};
use super::sys::{getpid, pidfd_exited};
use super::wait::Deadline;
use super::{
    corrupt, internal, peer_exited, slot_damaged, timeout_error, Decided, HostGroup, Step,
};
use crate::diag::{self, Ctx, Level};
use crate::error::{invalid, Error, ErrorKind, Result};
use crate::rules::{slots, Request, DP_RULES_VLLM_V2};
use crate::slot::{at, now_ns, Slot};

/// Failure word codes (bits 48..64; bits 32..48 the reporting rank, 16..32 the rank concerned).
const FAIL_TIMEOUT: u64 = 1;
const FAIL_PEER_EXITED: u64 = 2;
/// The header or a member entry is corrupt.
const FAIL_CORRUPT: u64 = 3;
/// A rank's slot was damaged (its checksum, or its sequence number).
const FAIL_SLOT: u64 = 4;

/// The sequence number of step `k` (the group's count; it wraps, and ranks are never more
/// than one step apart, so 32 bits tell the steps in flight apart).
fn seq_of(k: u64) -> u32 {
    k as u32
}

impl HostGroup {
    /// One step: publishes this rank's slot (or, for an invalid request, the invalid-request
    /// marker), waits for every rank's, copies them out of the segment, and checks and
    /// decides on the copies. `req` is `Err` when the C boundary could not read it.
    pub(crate) fn coordinate(&mut self, req: Result<&Request>) -> Result<Step> {
        let arrival = now_ns();
        if !is_opener(self.own.pid) {
            let pid = getpid();
            return Err(invalid!(
                "host group '{}': dp_host_group_coordinate in process {pid}, but rank {} of the \
                 group is process {} (this process inherited the handle across fork): only \
                 the process that opened the group steps with it; here only \
                 dp_host_group_close is allowed, and it only unmaps",
                self.name,
                self.dp_rank,
                self.own.pid
            ));
        }
        if let Some(e) = &self.failed {
            return Err(e.context(&format!(
                "host group '{}' is unusable after an earlier failure; close it",
                self.name
            )));
        }
        if let Err(e) = self.check_segment() {
            self.fail(&e, FAIL_CORRUPT, self.dp_rank);
            return Err(e);
        }
        let k = self.seq + 1;
        let made = req.and_then(|r| {
            let slot = slots::make(r, seq_of(k), arrival, self.graphs.as_deref())?;
            Ok((slot, r.timeout_ms))
        });
        let (slot, timeout_ms) = match &made {
            Ok((slot, timeout_ms)) => (*slot, *timeout_ms),
            Err(_) => (Slot::marker(seq_of(k), arrival), self.open_timeout_ms),
        };
        self.map.slot(self.dp_rank).bufs[(k & 1) as usize].publish(&slot);
        self.seq = k;
        let gathered = self.wait_step(k, timeout_ms).and_then(|waited| {
            // No clock read when every slot was there at the first look: nothing was waited.
            let wait_ns = if waited {
                now_ns().saturating_sub(arrival)
            } else {
                0
            };
            self.gather(k).map(|()| wait_ns)
        });
        let wait_ns = match gathered {
            Ok(wait_ns) => wait_ns,
            Err((e, code, concerned)) => {
                self.fail(&e, code, concerned);
                return Err(e);
            }
        };
        let checked = match slots::check(&self.slots, None) {
            Err(e) if e.kind == ErrorKind::Corrupt => {
                let r = self.slots.iter().position(|s| !s.intact());
                let e = e.context(&format!("host group '{}' at step {k}", self.name));
                self.fail(&e, FAIL_SLOT, r.unwrap_or(self.dp_rank));
                return Err(e);
            }
            checked => checked,
        };
        // This rank's own refusal names the field; the others' checks name this rank.
        made?;
        let checked =
            checked.map_err(|e| e.context(&format!("host group '{}' at step {k}", self.name)))?;
        let (step_id, last_rank) = (checked.step_id, checked.last_rank);
        if self.dp_size > 1 {
            let ctx = Ctx::new()
                .rank(self.dp_rank as i32, self.dp_size as i32)
                .group(&self.name)
                .step(step_id);
            self.stragglers
                .note(&ctx, last_rank, checked.arrival_skew_ns);
        }
        let (me, table) = (self.dp_rank as i32, self.graphs.as_deref());
        let out = Some(&mut self.tokens[..]);
        let decided = if checked.settings.rules == DP_RULES_VLLM_V2 {
            let agreement = slots::decide_v2(&self.slots, me, None, &checked, table, out)?;
            diag::decision(&self.ctx(step_id), "dp_host_group_coordinate", &agreement);
            Decided::V2(agreement)
        } else {
            let decision = slots::decide_v1(&self.slots, me, None, &checked, out)?;
            diag::decision(&self.ctx(step_id), "dp_host_group_coordinate", &decision);
            Decided::V1(decision)
        };
        Ok(Step {
            decided,
            step_id,
            last_rank,
            arrival_skew_ns: checked.arrival_skew_ns,
            wait_ns,
        })
    }

    /// Waits until every rank's buffer of parity `k & 1` holds step `k` (a rank already a
    /// step on has it there too: it cannot pass step `k + 1` before this rank publishes it).
    /// Returns whether it waited (false: every slot was there at the first look); on failure,
    /// the error, its failure code and the rank concerned.
    fn wait_step(&self, k: u64, timeout_ms: i32) -> std::result::Result<bool, (Error, u64, usize)> {
        let me = self.dp_rank;
        let looks = std::cell::Cell::new(0u32);
        let next = std::cell::Cell::new(0usize);
        let bad = std::cell::Cell::new(None::<(u64, usize)>);
        let name = &self.name;
        let parity = (k & 1) as usize;
        let seq = seq_of(k);
        // What the buffer holds before rank r publishes step k: step k - 2, or nothing yet.
        let before = seq_of(k.saturating_sub(2));
        let r = self.wait(
            Deadline::AfterMs(timeout_ms),
            |g| {
                looks.set(looks.get().saturating_add(1));
                let failure = g.map.header().failure.load(Ordering::Acquire);
                if failure != 0 {
                    return Err(g.failure_error(failure));
                }
                while next.get() < g.dp_size {
                    let r = next.get();
                    let held = g.map.slot(r).bufs[parity].seq();
                    if held == seq {
                        next.set(r + 1);
                        continue;
                    }
                    if held != before {
                        bad.set(Some((FAIL_SLOT, r)));
                        return Err(slot_damaged(
                            name,
                            format!(
                                "slot[{r}].bufs[{parity}] holds sequence number {held} at step \
                                 {k} (want {before} or {seq})"
                            ),
                            r,
                        ));
                    }
                    if g.map.member(r).state.load(Ordering::Acquire) != STATE_JOINED {
                        bad.set(Some((FAIL_PEER_EXITED, r)));
                        return Err(peer_exited(format!(
                            "host group '{name}': rank {r} closed the group (rank {me} waits \
                             at step {k})"
                        )));
                    }
                    return Ok(false);
                }
                Ok(true)
            },
            |g| {
                // Every rank not yet arrived, not only the first: a dead rank behind a slow
                // one is reported within one slice too.
                for r in next.get()..g.dp_size {
                    if r == me || g.map.slot(r).bufs[parity].seq() == seq {
                        continue;
                    }
                    let peer = &g.peers[r];
                    let member = g.map.member(r);
                    let id = Identity::load(member);
                    if let Some((field, now, was)) = id.differs_from(&peer.id) {
                        bad.set(Some((FAIL_CORRUPT, r)));
                        return Err(corrupt(
                            name,
                            format!("member[{r}].{field} = {now}, but rank {r} joined with {was}"),
                        ));
                    }
                    let pid = id.pid;
                    // The pidfd, checked at open against the start time, names the peer
                    // itself; without one, its pid is checked again (a reused pid is a dead
                    // peer).
                    let presence = match &peer.pidfd {
                        Some(fd) if pidfd_exited(fd) => Presence::Exited,
                        Some(_) => Presence::Alive,
                        None => peer.id.presence(g.proc_own),
                    };
                    let closed = member.state.load(Ordering::Acquire) != STATE_JOINED;
                    if presence != Presence::Alive || closed {
                        bad.set(Some((FAIL_PEER_EXITED, r)));
                        let what = if presence != Presence::Alive {
                            "exited"
                        } else {
                            "closed the group"
                        };
                        return Err(peer_exited(format!(
                            "host group '{name}': rank {r} (pid {pid}) {what} (rank {me} waits \
                             at step {k}){}",
                            presence.reuse_note(&peer.id)
                        )));
                    }
                }
                Ok(())
            },
            |g| {
                let r = next.get().min(g.dp_size - 1);
                let bufs = &g.map.slot(r).bufs;
                let held = bufs[0].seq().max(bufs[1].seq());
                timeout_error(format!(
                    "host group '{name}': rank {me} waited timeout_ms = {timeout_ms} at step {k} \
                     for rank {r} (pid {}), whose newest slot is of step {held}",
                    g.peers[r].id.pid
                ))
            },
        );
        // Wakes the ranks sleeping on this rank's publication (or a failure's).
        self.wake();
        r.map(|()| looks.get() > 1).map_err(|e| {
            let (code, concerned) = bad.get().unwrap_or(match e.kind {
                ErrorKind::Timeout => (FAIL_TIMEOUT, next.get().min(self.dp_size - 1)),
                // A peer's failure word: this rank leaves it as it is.
                _ => (0, me),
            });
            (e, code, concerned)
        })
    }

    /// Copies every rank's slot of step `k` out of the segment (the checks and the decision
    /// read only the copies), checking the member entries and the sequence numbers. On
    /// failure, the error, its failure code and the rank concerned.
    fn gather(&mut self, k: u64) -> std::result::Result<(), (Error, u64, usize)> {
        let parity = (k & 1) as usize;
        for r in 0..self.dp_size {
            let id = Identity::load(self.map.member(r));
            if let Some((field, now, was)) = id.differs_from(&self.peers[r].id) {
                let what = format!("member[{r}].{field} = {now}, but rank {r} joined with {was}");
                return Err((corrupt(&self.name, what), FAIL_CORRUPT, r));
            }
            let slot = self.map.slot(r).bufs[parity].copy();
            let held = slot.opaque[at::SEQ];
            if held != seq_of(k) {
                let what = format!(
                    "slot[{r}].bufs[{parity}]'s sequence number changed to {held} while it was \
                     read at step {k}"
                );
                return Err((slot_damaged(&self.name, what, r), FAIL_SLOT, r));
            }
            self.slots[r] = slot;
        }
        Ok(())
    }

    /// Re-checks the header fields fixed at creation and the failure word.
    pub(super) fn check_segment(&self) -> Result<()> {
        let h = self.map.header();
        let name = &self.name;
        let magic = h.magic.load(Ordering::Relaxed);
        if magic != MAGIC {
            return Err(corrupt(name, format!("header.magic = {magic:#018x}")));
        }
        let checks = [
            (
                "layout_version",
                h.layout_version.load(Ordering::Relaxed) as u64,
                LAYOUT_VERSION as u64,
            ),
            (
                "dp_size",
                h.dp_size.load(Ordering::Relaxed) as u64,
                self.dp_size as u64,
            ),
            (
                "owner_uid",
                h.owner_uid.load(Ordering::Relaxed) as u64,
                self.uid as u64,
            ),
            (
                "slot_size",
                h.slot_size.load(Ordering::Relaxed) as u64,
                SLOT_SIZE as u64,
            ),
            (
                "segment_size",
                h.segment_size.load(Ordering::Relaxed),
                self.map.len as u64,
            ),
        ];
        for (field, got, want) in checks {
            if got != want {
                return Err(corrupt(
                    name,
                    format!("header.{field} = {got}, want {want}"),
                ));
            }
        }
        let failure = h.failure.load(Ordering::Acquire);
        if failure != 0 {
            return Err(self.failure_error(failure));
        }
        Ok(())
    }

    /// The error a rank reports when it finds a peer's failure word.
    fn failure_error(&self, word: u64) -> Error {
        let code = word >> 48;
        let reporter = ((word >> 32) & 0xffff) as usize;
        let concerned = ((word >> 16) & 0xffff) as usize;
        let name = &self.name;
        if reporter >= self.dp_size || concerned >= self.dp_size || word & 0xffff != 0 {
            return corrupt(name, format!("header.failure = {word:#018x}"));
        }
        let what = format!("host group '{name}' failed: rank {reporter}");
        match code {
            FAIL_TIMEOUT => timeout_error(format!("{what} timed out waiting for rank {concerned}")),
            FAIL_PEER_EXITED => peer_exited(format!(
                "{what} saw rank {concerned} exit or close the group"
            )),
            FAIL_CORRUPT => internal(&format!(
                "{what} found the segment corrupt (the header, or the member entry of rank \
                 {concerned})"
            )),
            FAIL_SLOT => Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{what} found rank {concerned}'s slot damaged (a failed checksum, or \
                     another step's sequence number)"
                ),
            ),
            _ => corrupt(name, format!("header.failure = {word:#018x}")),
        }
    }

    /// Marks this rank's copy unusable and tells the other ranks (first failure wins).
    fn fail(&mut self, e: &Error, code: u64, concerned: usize) {
        // INFO, not WARN: the C boundary logs the failure itself once at WARN (with exactly
        // dp_last_error's text); this line adds the group, the rank and what follows.
        diag::log!(Level::Info, self.ctx(0), "group unusable from here on: {e}");
        if self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        let word =
            (code << 48) | ((self.dp_rank as u64) << 32) | ((concerned as u64 & 0xffff) << 16);
        let h = self.map.header();
        let _ = h
            .failure
            .compare_exchange(0, word, Ordering::AcqRel, Ordering::Acquire);
        self.wake();
    }
}
