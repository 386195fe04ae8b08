//! The step protocol: publish this rank's buffer, wait for every rank's, gather, decide; and
//! the failure word that makes every rank fail fast after a failed wait.

use std::sync::atomic::Ordering;

use super::identity::{Identity, Presence};
use super::segment::{KIND_INVALID, KIND_RECORD, LAYOUT_VERSION, MAGIC, SLOT_SIZE, STATE_JOINED};
use super::sys::pidfd_exited;
use super::wait::Deadline;
use super::{corrupt, inconsistent, internal, peer_exited, timeout_error, HostGroup, Step};
use crate::diag::{self, Level};
use crate::error::{invalid, Error, ErrorKind, Result};
use crate::rules::{self, RankRecord, Request};

/// Failure word codes (bits 48..64; bits 32..48 the reporting rank, 16..32 the rank concerned).
const FAIL_TIMEOUT: u64 = 1;
const FAIL_PEER_EXITED: u64 = 2;
const FAIL_CORRUPT: u64 = 3;

impl HostGroup {
    /// One step: publishes this rank's record (or, for an invalid request, a marker), waits
    /// for every rank's, and decides. `req` is `Err` when the C boundary could not read it.
    pub(crate) fn coordinate(&mut self, req: Result<&Request>) -> Result<Step> {
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
        let local = req.and_then(|r| {
            let record = rules::make_record(r)?;
            Ok((record, r))
        });
        let timeout_ms = match &local {
            Ok((_, r)) => r.timeout_ms,
            Err(_) => self.open_timeout_ms,
        };
        let step_id = local.as_ref().map_or(0, |(_, r)| r.step_id);
        let k = self.seq + 1;
        self.publish(k, &local, step_id);
        self.seq = k;
        if let Err((e, code, concerned)) = self.wait_step(k, timeout_ms) {
            self.fail(&e, code, concerned);
            return Err(e);
        }
        if let Err((e, concerned)) = self.gather(k) {
            self.fail(&e, FAIL_CORRUPT, concerned);
            return Err(e);
        }
        local?;
        let step = self.decide(k)?;
        diag::decision(
            &self.ctx(step.step_id),
            "dp_host_group_coordinate",
            &step.decision,
        );
        Ok(step)
    }

    fn publish(&self, k: u64, local: &Result<(RankRecord, &Request)>, step_id: i64) {
        let slot = self.map.slot(self.dp_rank);
        let b = &slot.bufs[(k & 1) as usize];
        let (kind, words, policy, n) = match local {
            Ok((rec, r)) => (
                KIND_RECORD,
                rec.to_words(),
                r.pad_policy,
                r.effective_num_ubatches(),
            ),
            Err(_) => (KIND_INVALID, [0; 5], 0, 0),
        };
        b.kind.store(kind, Ordering::Relaxed);
        b.step_id.store(step_id, Ordering::Relaxed);
        b.pad_policy.store(policy, Ordering::Relaxed);
        b.num_ubatches.store(n, Ordering::Relaxed);
        for (w, v) in b.words.iter().zip(words) {
            w.store(v, Ordering::Relaxed);
        }
        // The tag last, with release: a reader that sees it sees the buffer. The ranks
        // sleeping on it are woken by `wake` once this rank's wait ends or before it sleeps,
        // off the path of the store.
        b.tag.store(k, Ordering::Release);
    }

    /// Waits until every rank's buffer of parity `k & 1` holds step `k` (a rank already a
    /// step on has it there too: it cannot pass step `k + 1` before this rank publishes it).
    fn wait_step(&self, k: u64, timeout_ms: i32) -> std::result::Result<(), (Error, u64, usize)> {
        let me = self.dp_rank;
        let next = std::cell::Cell::new(0usize);
        let bad = std::cell::Cell::new(None::<(u64, usize)>);
        let name = &self.name;
        let parity = (k & 1) as usize;
        // What the buffer holds before rank r publishes step k: step k - 2, or nothing yet.
        let before = k.saturating_sub(2);
        let r = self.wait(
            Deadline::AfterMs(timeout_ms),
            |g| {
                let failure = g.map.header().failure.load(Ordering::Acquire);
                if failure != 0 {
                    return Err(g.failure_error(failure));
                }
                while next.get() < g.dp_size {
                    let r = next.get();
                    let tag = g.map.slot(r).bufs[parity].tag.load(Ordering::Acquire);
                    if tag == k {
                        next.set(r + 1);
                        continue;
                    }
                    if tag != before {
                        bad.set(Some((FAIL_CORRUPT, r)));
                        return Err(corrupt(
                            name,
                            format!(
                                "slot[{r}].bufs[{parity}].tag = {tag} at step {k} (want {before} \
                                 or {k})"
                            ),
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
                    if r == me || g.map.slot(r).bufs[parity].tag.load(Ordering::Acquire) == k {
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
                let s = bufs[0]
                    .tag
                    .load(Ordering::Relaxed)
                    .max(bufs[1].tag.load(Ordering::Relaxed));
                timeout_error(format!(
                    "host group '{name}': rank {me} waited timeout_ms = {timeout_ms} at step {k} \
                     for rank {r} (pid {}), which is still at step {s}",
                    g.peers[r].id.pid
                ))
            },
        );
        // Wakes the ranks sleeping on this rank's publication (or a failure's).
        self.wake();
        r.map_err(|e| {
            let (code, concerned) = bad.get().unwrap_or(match e.kind {
                ErrorKind::Timeout => (FAIL_TIMEOUT, next.get().min(self.dp_size - 1)),
                // A peer's failure word: this rank leaves it as it is.
                _ => (0, me),
            });
            (e, code, concerned)
        })
    }

    /// Copies every rank's buffer of step `k` into the local arrays, checking tag and kind.
    /// On corrupt data, the error and the rank whose slot holds it.
    fn gather(&mut self, k: u64) -> std::result::Result<(), (Error, usize)> {
        let parity = (k & 1) as usize;
        self.first_invalid = None;
        for r in 0..self.dp_size {
            let id = Identity::load(self.map.member(r));
            let b = &self.map.slot(r).bufs[parity];
            let tag = b.tag.load(Ordering::Relaxed);
            let kind = b.kind.load(Ordering::Relaxed);
            let bad = if let Some((field, now, was)) = id.differs_from(&self.peers[r].id) {
                Some(format!(
                    "member[{r}].{field} = {now}, but rank {r} joined with {was}"
                ))
            } else if tag != k {
                Some(format!("slot[{r}].bufs[{parity}].tag = {tag} at step {k}"))
            } else if kind != KIND_RECORD && kind != KIND_INVALID {
                Some(format!("slot[{r}].bufs[{parity}].kind = {kind}"))
            } else {
                None
            };
            if let Some(what) = bad {
                return Err((corrupt(&self.name, what), r));
            }
            if kind == KIND_INVALID && self.first_invalid.is_none() {
                self.first_invalid = Some(r);
            }
            let words: [i32; 5] = std::array::from_fn(|i| b.words[i].load(Ordering::Relaxed));
            self.records[r] = RankRecord::from_words(words);
            self.step_ids[r] = b.step_id.load(Ordering::Relaxed);
            self.policies[r] = (
                b.pad_policy.load(Ordering::Relaxed),
                b.num_ubatches.load(Ordering::Relaxed),
            );
        }
        Ok(())
    }

    /// The decision of step `k` from the gathered copies; every rank reaches the same verdict.
    fn decide(&mut self, k: u64) -> Result<Step> {
        if let Some(r) = self.first_invalid {
            return Err(invalid!(
                "host group '{}': rank {r} passed an invalid request at step {k} (its \
                 dp_last_error says why); no rank decides this step",
                self.name
            ));
        }
        let (policy, n) = self.policies[0];
        for (r, &(p, m)) in self.policies.iter().enumerate() {
            if p != policy {
                return Err(inconsistent(format!(
                    "pad_policy differs across ranks: rank 0 passed {policy}, rank {r} passed {p}"
                )));
            }
            if m != n {
                return Err(inconsistent(format!(
                    "num_ubatches differs across ranks: rank 0 uses {n}, rank {r} uses {m}"
                )));
            }
        }
        let step_id = rules::check_step_ids(&self.step_ids, None)?;
        let decision = rules::decide(
            &self.records,
            self.dp_rank as i32,
            policy,
            n,
            Some(&mut self.tokens),
        )?;
        Ok(Step { decision, step_id })
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
                "{what} found the segment corrupt (the header or the slot of rank {concerned})"
            )),
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
