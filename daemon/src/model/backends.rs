//! A route's backend set at run time: its members, what health checking knows about each,
//! and the choice of one member per L4 connection or L7 request.
//!
//! No I/O. A [`BackendSet`] is built with its `RouteInfo` and swapped with it; each member's
//! [`MemberHealth`] (counters, passive ejection, active check results) lives in the route's
//! `RouteStats`, keyed by address, so it outlives route edits and admin state changes.
//!
//! Choosing (`BackendSet::pick`) takes no lock while the members are healthy: the round robin
//! is one atomic increment over a precomputed cycle, and each member's "barred" flag (down or
//! ejected) is an atomic mirrored from its health lock; only a barred member's closer look
//! takes that lock, never held across an `.await`. A member is a candidate when it is enabled, not down by the active check, and not
//! ejected (or ejected with its cooldown over and no trial connection out yet: then this
//! connection is the trial). When no enabled, checked-up member is a candidate because every
//! one of them is ejected, ejection is ignored (Envoy's "panic" rule): with nowhere else to
//! go, trying is better than refusing, and a lone backend that restarts is back at once.
//!
//! Passive health ([`MemberHealth::failed`], [`MemberHealth::succeeded`]): `eject_after`
//! failures in a row eject a member for `eject_time`, doubled on each ejection that follows
//! within a few cooldowns (capped at `eject_max_time`); when the cooldown is over one
//! connection is let through, and its result decides: success brings the member back,
//! failure ejects it again for longer.
//!
//! What is shown never outlives its evidence: the state is computed when read (an ejection
//! whose cooldown is over reads `up`, or `unknown`, at once), every state change records its
//! wall clock "since", the reason is rewritten by each check result (an `up` member carries
//! no old failure), and a change of the route's check drops the results of the old one. A
//! member with no evidence yet (never checked, never contacted) is `unknown`: it takes
//! traffic, its first success makes it `up`, its failures count as usual.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mc_proxy_shared::{
    AdminState, BackendState, Balance, CheckResult, HealthCheck, MemberStats, RouteBackend,
};

use crate::model::histogram::{HistogramSnapshot, LatencyHistogram};

/// The longest state change reason kept, in bytes: errors can carry names from afar.
const REASON_MAX: usize = 200;

/// Ejections begun in this process. An ejection's end is the one change of a member's state
/// that comes with no event of its own (it is time passing): the health walk looks at every
/// route when this count moved since its last look, and learns there when each ejection ends
/// ([`MemberHealth::observe_noting`]); otherwise it looks only at the routes it probes
/// (`connectors::health`). A count each walk compares with its own last reading, so daemons
/// sharing a test process cost one another an extra look at most, never a missed end.
static EJECTIONS_BEGUN: AtomicU64 = AtomicU64::new(0);

/// [`EJECTIONS_BEGUN`] now.
pub fn ejections_begun() -> u64 {
    EJECTIONS_BEGUN.load(Ordering::Acquire)
}

/// `text` cut to [`REASON_MAX`] bytes at a character boundary, with `…` when cut.
fn clip(text: &str) -> String {
    if text.len() <= REASON_MAX {
        return text.to_owned();
    }
    let mut end = REASON_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The most members a route may have: choices keep the tried ones in a `u64` bit set.
pub const MAX_MEMBERS: usize = mc_proxy_shared::route_check::MAX_MEMBERS;

/// Passive health settings (`[proxy]` `backend_eject_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passive {
    /// Failures in a row that eject a member.
    pub eject_after: u32,
    /// The first ejection's cooldown.
    pub eject_time: Duration,
    /// The longest cooldown.
    pub eject_max_time: Duration,
}

impl Default for Passive {
    fn default() -> Self {
        Passive {
            eject_after: 3,
            eject_time: Duration::from_secs(5),
            eject_max_time: Duration::from_secs(120),
        }
    }
}

/// What is known about one member's health, and its counters. Shared by every version of the
/// route that has a member at this address.
#[derive(Debug, Default)]
pub struct MemberHealth {
    /// L4 connections or L7 requests open on it now.
    active: AtomicU64,
    /// Sent to it since start.
    total: AtomicU64,
    /// Failed connects and connection-level failures since start.
    failures: AtomicU64,
    /// Times passive health ejected it.
    ejections: AtomicU64,
    /// Active check probes that passed.
    checks_passed: AtomicU64,
    /// Active check probes that failed.
    checks_failed: AtomicU64,
    /// Active check probe durations (to the failure, for a failed one).
    check_duration: LatencyHistogram,
    /// Something worked: a check passed, or a connection or request went through. Until
    /// then (and again when a check that had it down is removed) the member is `unknown`.
    /// Read without the lock on the success path, set under it.
    known: AtomicBool,
    /// Passive health has something a success would clear (failures in a row, an
    /// ejection): set under the lock, read without it, so the per-request success of a
    /// healthy member takes no lock.
    troubled: AtomicBool,
    /// Not a candidate without a closer look (down by the active check, or ejected):
    /// mirrored from `inner` each time its lock is released ([`Locked`]), read without it,
    /// so choosing among healthy members takes no lock.
    barred: AtomicBool,
    inner: Mutex<Health>,
}

/// [`MemberHealth`]'s lock, which mirrors the member's "barred" state into its atomic when
/// released (before the mutex unlocks, so the next locker sees both agree).
struct Locked<'a> {
    guard: std::sync::MutexGuard<'a, Health>,
    barred: &'a AtomicBool,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Health;
    fn deref(&self) -> &Health {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Health {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let barred = self.guard.check_down || self.guard.ejected_until.is_some();
        self.barred.store(barred, Ordering::Release);
    }
}

#[derive(Debug, Default)]
struct Health {
    /// Passive: failures since the last success.
    failures_in_row: u32,
    /// Passive: ejected until then (a trial may go once it has passed).
    ejected_until: Option<Instant>,
    /// Passive: the trial connection after a cooldown is out.
    trial_out: bool,
    /// Passive: ejections in the current streak (the cooldown doubles with each).
    streak: u32,
    /// When the last ejection began.
    ejected_at: Option<Instant>,
    /// Active check: down (`fall` failures in a row seen, `rise` successes not yet).
    check_down: bool,
    /// Active check: results in a row that disagree with `check_down`.
    check_run: u32,
    /// Active check: a probe is running.
    probing: bool,
    /// Active check: when the next probe is due.
    next_probe: Option<Instant>,
    /// Active check: the check the results below are for; another one (the route's check
    /// was edited) drops them.
    check_for: Option<HealthCheck>,
    /// Active check: the newest result with `check_for`.
    last_check: Option<CheckResult>,
    /// Why it is in its state.
    reason: String,
    /// The state last published, to publish changes only.
    published: BackendState,
    /// When `published` last changed.
    since: Since,
}

/// A wall clock time that defaults to now: a member's first "since" is when it was first seen.
#[derive(Debug, Clone, Copy)]
struct Since(SystemTime);

impl Default for Since {
    fn default() -> Self {
        Since(SystemTime::now())
    }
}

/// Milliseconds since the Unix epoch of `t` (0 before it).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Health {
    /// The state at `now`: an ejection counts only until its cooldown is over (then the
    /// member is tried again and shows so, whether or not a trial went yet).
    fn state(&self, admin: AdminState, known: bool, now: Instant) -> BackendState {
        match admin {
            AdminState::Disabled => BackendState::Disabled,
            AdminState::Draining => BackendState::Draining,
            AdminState::Enabled if self.check_down => BackendState::Down,
            AdminState::Enabled if self.ejected_until.is_some_and(|until| until > now) => {
                BackendState::Ejected
            }
            AdminState::Enabled if !known => BackendState::Unknown,
            AdminState::Enabled => BackendState::Up,
        }
    }
}

/// A change of a member's state, to publish as an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The member's figures after the change.
    pub member: MemberStats,
}

impl MemberHealth {
    /// The member's figures, for stats and events.
    pub fn stats(&self, spec: &RouteBackend) -> MemberStats {
        let check = self.lock().check_for.clone();
        self.stats_for(spec, check.as_ref())
    }

    /// The member's figures as the route with `check` reads them: when the route's check
    /// changed and the walk did not see it yet (at most a tick), the old check's result and
    /// the reason drawn from it are not shown.
    pub fn stats_for(&self, spec: &RouteBackend, check: Option<&HealthCheck>) -> MemberStats {
        let h = self.lock();
        let now = Instant::now();
        let current = h.check_for.as_ref() == check;
        let state = h.state(spec.state, self.is_known(), now);
        let check_reason =
            spec.state == AdminState::Enabled && h.ejected_until.is_none_or(|until| until <= now);
        MemberStats {
            address: spec.address.clone(),
            weight: spec.weight,
            admin: spec.state,
            state,
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            // Read between the state's change and the walk that publishes it (at most a
            // tick), the reason would be the old state's: better none than a wrong one.
            reason: if state != h.published {
                String::new()
            } else if !current && check_reason {
                match check {
                    Some(_) => "the health check changed: no result yet",
                    None => "the health check was removed",
                }
                .to_owned()
            } else {
                h.reason.clone()
            },
            since_ms: unix_ms(h.since.0),
            last_check: if current { h.last_check.clone() } else { None },
            checks_passed: self.checks_passed.load(Ordering::Relaxed),
            checks_failed: self.checks_failed.load(Ordering::Relaxed),
        }
    }

    /// The active check probe durations since start.
    pub fn check_duration(&self) -> HistogramSnapshot {
        self.check_duration.snapshot()
    }

    fn is_known(&self) -> bool {
        self.known.load(Ordering::Acquire)
    }

    /// Open connections or requests on it now.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Passive: a connection or request to the member worked.
    pub fn succeeded(&self, spec: &RouteBackend) -> Option<Transition> {
        if !self.troubled.load(Ordering::Acquire) && self.is_known() {
            return None;
        }
        let mut h = self.lock();
        self.troubled.store(false, Ordering::Release);
        h.failures_in_row = 0;
        if h.ejected_until.take().is_some() {
            h.trial_out = false;
            h.reason = "a trial connection after the ejection succeeded".to_owned();
        } else if !self.is_known() && !h.check_down {
            h.reason = "the first connection went through".to_owned();
        }
        self.known.store(true, Ordering::Release);
        self.transition(h, spec)
    }

    /// Passive: a connect failed, or a connection-level failure on L7 (`why` is logged
    /// and kept, clipped).
    pub fn failed(
        &self,
        spec: &RouteBackend,
        passive: &Passive,
        why: &dyn std::fmt::Display,
    ) -> Option<Transition> {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut h = self.lock();
        self.troubled.store(true, Ordering::Release);
        h.failures_in_row = h.failures_in_row.saturating_add(1);
        let eject = if h.ejected_until.is_some() {
            // Only the trial's failure counts while ejected: it sends the member back out.
            std::mem::take(&mut h.trial_out)
        } else {
            h.failures_in_row >= passive.eject_after
        };
        if eject {
            // A streak ends when the member stayed in for a few cooldowns since the last one.
            let quiet = passive.eject_max_time.max(passive.eject_time) * 2;
            if h.ejected_at.is_none_or(|at| now.duration_since(at) > quiet) {
                h.streak = 0;
            }
            h.streak = h.streak.saturating_add(1);
            let cooldown = passive
                .eject_time
                .saturating_mul(1 << (h.streak - 1).min(16))
                .min(passive.eject_max_time.max(passive.eject_time));
            h.ejected_until = Some(now + cooldown);
            EJECTIONS_BEGUN.fetch_add(1, Ordering::AcqRel);
            h.ejected_at = Some(now);
            self.ejections.fetch_add(1, Ordering::Relaxed);
            // The end as a wall clock time: read later, "for 5s" alone would not say whether
            // the 5 s are over.
            let until = humantime::format_rfc3339_seconds(SystemTime::now() + cooldown);
            h.reason = clip(&format!(
                "ejected until {until} ({}): {} failures in a row, the last: {why}",
                humantime::format_duration(cooldown),
                h.failures_in_row
            ));
        }
        // An ejection is published even when the member was ejected already (a failed
        // trial): the cooldown and the count changed.
        self.transition_if(h, spec, eject)
    }

    /// Active check: whether a probe is due at `now` (and, if so, marks it running).
    pub fn probe_due(&self, now: Instant) -> bool {
        let mut h = self.lock();
        if h.probing || h.next_probe.is_some_and(|at| at > now) {
            return false;
        }
        h.probing = true;
        true
    }

    /// Active check: a probe's result after `latency`. The first success of an `unknown`
    /// member makes it `up`; `rise` successes in a row bring a down member up, `fall`
    /// failures in a row bring an up (or unknown) one down; the next probe is due `interval`
    /// later. The reason follows the result. A result for another check than the route's
    /// current one (it was edited while the probe ran) is dropped.
    pub fn probed(
        &self,
        spec: &RouteBackend,
        check: &HealthCheck,
        result: Result<(), String>,
        latency: Duration,
    ) -> Option<Transition> {
        let now = Instant::now();
        let mut h = self.lock();
        h.probing = false;
        h.next_probe = Some(now + check.interval);
        if h.check_for.as_ref().is_some_and(|c| c != check) {
            return None;
        }
        if h.check_for.is_none() {
            // The walk had not handed it over yet (the member is new).
            h.check_for = Some(check.clone());
        }
        let counter = match result {
            Ok(()) => &self.checks_passed,
            Err(_) => &self.checks_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.check_duration.record(latency);
        let error = result.err().map(|e| clip(&e));
        h.last_check = Some(CheckResult {
            at_ms: unix_ms(SystemTime::now()),
            error: error.clone(),
            latency,
        });
        let was_down = h.check_down;
        let first = !was_down && !self.is_known();
        if error.is_none() != was_down {
            h.check_run = 0;
        } else {
            h.check_run = h.check_run.saturating_add(1);
            let needed = if was_down { check.rise } else { check.fall };
            if h.check_run >= needed.max(1) {
                h.check_run = 0;
                h.check_down = !was_down;
                if !h.check_down {
                    // Back from down: a fresh start for passive health too.
                    h.failures_in_row = 0;
                    h.ejected_until = None;
                    h.trial_out = false;
                }
            }
        }
        if error.is_none() {
            self.known.store(true, Ordering::Release);
        }
        // The reason is the check's while the check decides the state (not while the
        // operator's drain or disable, or a passive ejection, does).
        let ejected = h.ejected_until.is_some_and(|until| until > now);
        if spec.state == AdminState::Enabled && !ejected {
            let run = h.check_run;
            h.reason = match (&error, was_down, h.check_down) {
                (None, true, false) if check.rise == 1 => "a check passed".to_owned(),
                (None, true, false) => format!("{} checks passed in a row", check.rise),
                (None, true, true) => format!("{run} of {} checks passed to come back", check.rise),
                (None, false, _) if first => "the first check passed".to_owned(),
                (None, false, _) => "the last check passed".to_owned(),
                (Some(e), false, true) if check.fall == 1 => clip(&format!("a check failed: {e}")),
                (Some(e), false, true) => {
                    clip(&format!("{} checks failed in a row: {e}", check.fall))
                }
                (Some(e), true, _) => clip(&format!("checks failing, the last: {e}")),
                (Some(e), false, false) => clip(&format!(
                    "{run} of {} checks failed that mark it down, the last: {e}",
                    check.fall
                )),
            };
        }
        self.transition(h, spec)
    }

    /// Active check: what the walk sees each tick, the route's `check` now. A check that
    /// changed drops the old one's results (they answered another question) and is probed
    /// at once; a check removed forgets its verdict too (a member it had down is `unknown`
    /// again). Publishes any state change since the last one (admin changes, an ejection
    /// whose cooldown ended).
    pub fn observe(&self, spec: &RouteBackend, check: Option<&HealthCheck>) -> Option<Transition> {
        self.observe_noting(spec, check, &mut None)
    }

    /// [`Self::observe`], and `ends` lowered to the end of the member's ejection if it is
    /// ejected: when the walk must look again (the end is published by no one else).
    pub fn observe_noting(
        &self,
        spec: &RouteBackend,
        check: Option<&HealthCheck>,
        ends: &mut Option<Instant>,
    ) -> Option<Transition> {
        let mut h = self.lock();
        if let Some(until) = h.ejected_until.filter(|until| *until > Instant::now()) {
            *ends = Some(ends.map_or(until, |end| end.min(until)));
        }
        if h.check_for.as_ref() != check {
            let had = h.check_for.is_some();
            h.check_for = check.cloned();
            h.last_check = None;
            h.check_run = 0;
            h.next_probe = None;
            if check.is_none() && h.check_down {
                h.check_down = false;
                self.known.store(false, Ordering::Release);
            }
            let ejected = h.ejected_until.is_some_and(|until| until > Instant::now());
            if had && spec.state == AdminState::Enabled && !ejected {
                h.reason = match check {
                    Some(_) => "the health check changed: no result yet".to_owned(),
                    None => "the health check was removed".to_owned(),
                };
            }
        }
        self.transition(h, spec)
    }

    /// The state change since the last one published, if there was one. Admin changes come
    /// through here too: [`BackendSet::publishable`] calls it for every member after a swap.
    pub fn republish(&self, spec: &RouteBackend) -> Option<Transition> {
        self.transition(self.lock(), spec)
    }

    fn transition(&self, h: Locked<'_>, spec: &RouteBackend) -> Option<Transition> {
        self.transition_if(h, spec, false)
    }

    /// [`Self::transition`], or the member's figures anyway when `force` is set.
    fn transition_if(
        &self,
        mut h: Locked<'_>,
        spec: &RouteBackend,
        force: bool,
    ) -> Option<Transition> {
        let state = h.state(spec.state, self.is_known(), Instant::now());
        if state == h.published && !force {
            return None;
        }
        let by_operator =
            |s: BackendState| matches!(s, BackendState::Draining | BackendState::Disabled);
        if by_operator(state) {
            h.reason = format!("{} by the operator", spec.state);
        } else if by_operator(h.published) && state.takes_traffic() {
            h.reason = "enabled by the operator".to_owned();
        } else if h.published == BackendState::Ejected && state.takes_traffic() {
            // The cooldown is over and no verdict came yet: say so, not the old failure.
            h.reason = "the ejection's cooldown is over: the next connection is a trial".to_owned();
        }
        if state != h.published {
            h.since = Since::default();
        }
        h.published = state;
        drop(h);
        Some(Transition {
            member: self.stats(spec),
        })
    }

    /// Whether it may take a new connection at `now`, and whether that would be the trial
    /// after an ejection.
    fn candidate(&self, admin: AdminState, now: Instant, panic: bool) -> Option<bool> {
        if admin != AdminState::Enabled {
            return None;
        }
        // Healthy and not ejected (the common case): no lock.
        if !self.barred.load(Ordering::Acquire) {
            return Some(false);
        }
        let h = self.lock();
        if h.check_down {
            return None;
        }
        match h.ejected_until {
            None => Some(false),
            Some(_) if panic => Some(false),
            Some(until) if until <= now && !h.trial_out => Some(true),
            Some(_) => None,
        }
    }

    /// Gives back the trial slot of a trial that ended without a verdict (its request was
    /// abandoned, or ended in what is not the member's fault nor its success: a wait for
    /// another request's dial, the proxy's cap, a graceful close): the next request may be
    /// the trial. `ejections` is the count when the trial was claimed: a trial of an
    /// ejection since over, or followed by another, is not this one's to give back.
    fn release_trial(&self, ejections: u64) {
        let mut h = self.lock();
        if h.ejected_until.is_some() && self.ejections.load(Ordering::Relaxed) == ejections {
            h.trial_out = false;
        }
    }

    /// Takes the trial slot: `Ok(Some(ejections))` with the ejection count it was taken
    /// under, `Ok(None)` when the member is no longer ejected (no trial needed), `Err(())`
    /// when another connection took it first.
    fn claim_trial(&self) -> Result<Option<u64>, ()> {
        let mut h = self.lock();
        if h.ejected_until.is_none() {
            return Ok(None);
        }
        if std::mem::replace(&mut h.trial_out, true) {
            return Err(());
        }
        Ok(Some(self.ejections.load(Ordering::Relaxed)))
    }

    fn lock(&self) -> Locked<'_> {
        // A panic while holding it cannot leave `Health` half-updated in a way that matters:
        // keep going with what is there.
        Locked {
            guard: self.inner.lock().unwrap_or_else(|e| e.into_inner()),
            barred: &self.barred,
        }
    }
}

/// One member as this version of the route has it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Address, weight and admin state.
    pub spec: RouteBackend,
    /// Health and counters, shared across route versions.
    pub health: Arc<MemberHealth>,
    /// `spec.address`, shared: every L4 connection to the member names it in its record and
    /// listing without a copy of its own.
    pub address: Arc<str>,
}

/// A route's members and how it picks one.
#[derive(Debug)]
pub struct BackendSet {
    members: Vec<Member>,
    balance: Balance,
    /// Smooth weighted round robin over every member, precomputed for one cycle (the total
    /// weight: at most 64 × 256 slots), so that a pick is one atomic increment, no lock
    /// (pingora-load-balancing does the same).
    sequence: Box<[u8]>,
    /// The next slot of `sequence` (modulo its length).
    cursor: AtomicU64,
}

/// The member chosen for one connection or request; counts it as active until dropped.
#[derive(Debug)]
pub struct Pick {
    /// Position in the set.
    pub index: usize,
    health: Arc<MemberHealth>,
    /// The trial after an ejection: the member's ejection count when it was claimed.
    trial: Option<u64>,
}

impl Pick {
    /// The member's health, to report the outcome to.
    pub fn health(&self) -> &MemberHealth {
        &self.health
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.health.active.fetch_sub(1, Ordering::Relaxed);
        // A trial with no verdict by now (a failure re-ejected the member, a success ended
        // the ejection) must not keep the member out for good.
        if let Some(ejections) = self.trial {
            self.health.release_trial(ejections);
        }
    }
}

/// A set of member positions (at most [`MAX_MEMBERS`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    /// Adds a position.
    pub fn add(&mut self, index: usize) {
        self.0 |= 1 << index;
    }

    /// Takes a position out.
    pub fn remove(&mut self, index: usize) {
        self.0 &= !(1 << index);
    }

    /// Whether it holds `index`.
    pub fn has(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }
}

impl Clone for BackendSet {
    /// The same members sharing the same health, the round robin position copied.
    fn clone(&self) -> Self {
        BackendSet {
            members: self.members.clone(),
            balance: self.balance,
            sequence: self.sequence.clone(),
            cursor: AtomicU64::new(self.cursor.load(Ordering::Relaxed)),
        }
    }
}

impl BackendSet {
    /// The set for `members` (validated: 1 to [`MAX_MEMBERS`], unique addresses), each with
    /// the health `health_for(address)` returns.
    pub fn new(
        members: &[RouteBackend],
        balance: Balance,
        mut health_for: impl FnMut(&str) -> Arc<MemberHealth>,
    ) -> Self {
        let members: Vec<Member> = members
            .iter()
            .take(MAX_MEMBERS)
            .map(|spec| Member {
                health: health_for(&spec.address),
                address: Arc::from(spec.address.as_str()),
                spec: spec.clone(),
            })
            .collect();
        BackendSet {
            sequence: smooth_sequence(&members),
            cursor: AtomicU64::new(0),
            members,
            balance,
        }
    }

    /// The members, in configured order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member at `index`.
    pub fn member(&self, index: usize) -> &Member {
        &self.members[index]
    }

    /// Every member's figures, in configured order, as the route with `check` reads them.
    pub fn stats(&self, check: Option<&HealthCheck>) -> Vec<MemberStats> {
        self.members
            .iter()
            .map(|m| m.health.stats_for(&m.spec, check))
            .collect()
    }

    /// `a:1 down, b:2 draining`: each member and its state, for "no backend" errors.
    pub fn states(&self) -> String {
        let mut out = String::new();
        for (i, m) in self
            .members
            .iter()
            .map(|m| m.health.stats(&m.spec))
            .enumerate()
        {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&m.address);
            out.push(' ');
            out.push_str(m.state.as_str());
        }
        out
    }

    /// State changes not yet published (after a swap that changed admin states).
    pub fn publishable(&self) -> Vec<Transition> {
        self.members
            .iter()
            .filter_map(|m| m.health.republish(&m.spec))
            .collect()
    }

    /// Picks a member for a new connection (L4) or request (L7) from `client`, skipping the
    /// ones in `tried`; `None` when no member may take it.
    pub fn pick(&self, client: IpAddr, tried: Tried) -> Option<Pick> {
        let now = Instant::now();
        for panic in [false, true] {
            let mut trial = Tried::default();
            let mut candidates = Tried::default();
            let mut any = false;
            for (i, m) in self.members.iter().enumerate() {
                if tried.has(i) {
                    continue;
                }
                if let Some(is_trial) = m.health.candidate(m.spec.state, now, panic) {
                    candidates.add(i);
                    any = true;
                    if is_trial {
                        trial.add(i);
                    }
                }
            }
            if !any {
                if panic || !self.all_ejected(tried) {
                    return None;
                }
                continue;
            }
            let index = self.choose(candidates, client)?;
            let health = &self.members[index].health;
            let mut claimed = None;
            if trial.has(index) {
                match health.claim_trial() {
                    Ok(ejections) => claimed = ejections,
                    Err(()) => {
                        // Raced another connection for the trial: choose among the rest.
                        let mut tried = tried;
                        tried.add(index);
                        return self.pick(client, tried);
                    }
                }
            }
            health.active.fetch_add(1, Ordering::Relaxed);
            health.total.fetch_add(1, Ordering::Relaxed);
            return Some(Pick {
                index,
                health: Arc::clone(health),
                trial: claimed,
            });
        }
        None
    }

    /// Whether every member outside `tried` that is enabled and up by the active check is
    /// passively ejected (and there is at least one).
    fn all_ejected(&self, tried: Tried) -> bool {
        let mut any = false;
        for (i, m) in self.members.iter().enumerate() {
            if tried.has(i) || m.spec.state != AdminState::Enabled {
                continue;
            }
            let h = m.health.lock();
            if h.check_down {
                continue;
            }
            if h.ejected_until.is_none() {
                return false;
            }
            any = true;
        }
        any
    }

    fn choose(&self, candidates: Tried, client: IpAddr) -> Option<usize> {
        // The common case, one backend: nothing to balance, no lock to take.
        if self.members.len() == 1 {
            return candidates.has(0).then_some(0);
        }
        let eligible = || (0..self.members.len()).filter(move |i| candidates.has(*i));
        match self.balance {
            Balance::RoundRobin => self.round_robin(candidates),
            Balance::LeastConn => {
                // Fewest active per unit of weight: compare a/w_a < b/w_b as a*w_b < b*w_a.
                let load = |i: usize| {
                    let m = &self.members[i];
                    (
                        u128::from(m.health.active()),
                        u128::from(m.spec.weight.max(1)),
                    )
                };
                let best = eligible().min_by(|&a, &b| {
                    let ((la, wa), (lb, wb)) = (load(a), load(b));
                    (la * wb).cmp(&(lb * wa))
                })?;
                // Among the equally loaded, go round robin so that an idle set spreads.
                let (lb, wb) = load(best);
                let mut ties = Tried::default();
                for i in eligible() {
                    let (l, w) = load(i);
                    if l * wb == lb * w {
                        ties.add(i);
                    }
                }
                self.round_robin(ties)
            }
            Balance::Source => eligible().max_by(|&a, &b| {
                let score = |i: usize| rendezvous(client, &self.members[i].spec);
                score(a).total_cmp(&score(b))
            }),
        }
    }

    /// nginx's smooth weighted round robin over `candidates`: the next slot of the
    /// precomputed cycle whose member is a candidate. Every slot taken is consumed, so members
    /// left out (ejected, draining, tried) give their turns to the others evenly; over a cycle
    /// with every member a candidate each gets exactly its weight's share, interleaved.
    fn round_robin(&self, candidates: Tried) -> Option<usize> {
        let len = self.sequence.len() as u64;
        for _ in 0..len {
            let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % len;
            let i = usize::from(self.sequence[slot as usize]);
            if candidates.has(i) {
                return Some(i);
            }
        }
        None
    }
}

/// One cycle of nginx's smooth weighted round robin over `members` (each gains its weight,
/// the one with the most goes and loses the total): the member index per slot, `Σ weights`
/// slots.
fn smooth_sequence(members: &[Member]) -> Box<[u8]> {
    let weights: Vec<i64> = members
        .iter()
        .map(|m| i64::from(m.spec.weight.max(1)))
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        // At most MAX_MEMBERS (64) members: an index fits a byte.
        out.push(u8::try_from(best).unwrap_or(u8::MAX));
    }
    out.into_boxed_slice()
}

/// Weighted rendezvous hashing: each member scores `-weight / ln(h)` with `h` a hash of the
/// client address and the member's in (0, 1); the highest wins. A member leaving moves only
/// its own clients, and a member of twice the weight gets twice the clients.
fn rendezvous(client: IpAddr, member: &RouteBackend) -> f64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    client.hash(&mut hasher);
    member.address.hash(&mut hasher);
    let h = hasher.finish();
    // 53 random bits, shifted off 0 so that ln() is finite and negative.
    let unit = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(member.weight.max(1)) / unit.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn set(members: &[(&str, u32)], balance: Balance) -> BackendSet {
        let specs: Vec<RouteBackend> = members
            .iter()
            .map(|(a, w)| RouteBackend::new(*a).with_weight(*w))
            .collect();
        BackendSet::new(&specs, balance, |_| Arc::default())
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    fn counts(set: &BackendSet, n: usize, client: impl Fn(usize) -> IpAddr) -> Vec<usize> {
        let mut counts = vec![0; set.members().len()];
        for i in 0..n {
            let pick = set.pick(client(i), Tried::default()).expect("a member");
            counts[pick.index] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_follows_weights_exactly_and_interleaves() {
        let s = set(&[("a:1", 1), ("b:1", 2), ("c:1", 3)], Balance::RoundRobin);
        assert_eq!(counts(&s, 600, |_| ip(1)), [100, 200, 300]);
        // Smooth: the heaviest never goes more than its share in a row.
        let order: Vec<usize> = (0..6)
            .map(|_| s.pick(ip(1), Tried::default()).unwrap().index)
            .collect();
        assert_eq!(order.iter().filter(|&&i| i == 2).count(), 3);
        assert!(
            order
                .windows(3)
                .all(|w| !(w[0] == 2 && w[1] == 2 && w[2] == 2))
        );
    }

    /// A member left out gives its turns to the others evenly, not to its neighbour in the
    /// cycle; and the round robin takes no lock, so the workers' picks interleave freely.
    #[test]
    fn round_robin_without_a_member_shares_its_turns_evenly() {
        let s = set(&[("a:1", 1), ("b:1", 1), ("c:1", 1)], Balance::RoundRobin);
        let mut tried = Tried::default();
        tried.add(2);
        let mut got = [0usize; 3];
        for _ in 0..300 {
            let p = s.pick(ip(1), tried).unwrap();
            got[p.index] += 1;
        }
        assert_eq!(got, [150, 150, 0]);

        // Picks from several threads at once: every one lands, the shares stay exact.
        let s = Arc::new(set(&[("a:1", 3), ("b:1", 1)], Balance::RoundRobin));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    let mut got = [0usize; 2];
                    for _ in 0..1000 {
                        got[s.pick(ip(1), Tried::default()).unwrap().index] += 1;
                    }
                    got
                })
            })
            .collect();
        let total = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .fold([0, 0], |a, b| [a[0] + b[0], a[1] + b[1]]);
        assert_eq!(total, [3000, 1000]);
    }

    #[test]
    fn least_conn_prefers_the_least_loaded_by_weight() {
        let s = set(&[("a:1", 1), ("b:1", 1)], Balance::LeastConn);
        let held = s.pick(ip(1), Tried::default()).unwrap();
        // While one is busy, everything goes to the other.
        for _ in 0..5 {
            let p = s.pick(ip(1), Tried::default()).unwrap();
            assert_ne!(p.index, held.index);
        }
        drop(held);
        // Idle again: ties spread round robin.
        let c = counts(&s, 10, |_| ip(1));
        assert_eq!(c, [5, 5]);
    }

    #[test]
    fn source_is_sticky_weighted_and_moves_only_the_leavers_clients() {
        let s = set(&[("a:1", 1), ("b:1", 1), ("c:1", 2)], Balance::Source);
        let first: Vec<usize> = (0..2000)
            .map(|i| s.pick(ip(i), Tried::default()).unwrap().index)
            .collect();
        let again: Vec<usize> = (0..2000)
            .map(|i| s.pick(ip(i), Tried::default()).unwrap().index)
            .collect();
        assert_eq!(first, again, "the same client goes to the same member");
        let mut by = HashMap::new();
        for i in &first {
            *by.entry(*i).or_insert(0) += 1;
        }
        // c has half the weight: about 1000 of 2000.
        assert!((850..1150).contains(&by[&2]), "{by:?}");
        // Take b out: only b's clients move.
        let mut without_b = Tried::default();
        without_b.add(1);
        for (i, before) in first.iter().enumerate() {
            let after = s.pick(ip(i as u32), without_b).unwrap().index;
            if *before != 1 {
                assert_eq!(after, *before);
            }
        }
    }

    #[test]
    fn admin_states_and_tried_members_are_skipped() {
        let mut specs = vec![RouteBackend::new("a:1"), RouteBackend::new("b:1")];
        specs[0].state = AdminState::Draining;
        let s = BackendSet::new(&specs, Balance::RoundRobin, |_| Arc::default());
        assert_eq!(counts(&s, 4, |_| ip(1)), [0, 4]);
        let mut tried = Tried::default();
        tried.add(1);
        assert!(s.pick(ip(1), tried).is_none(), "draining takes nothing new");
    }

    #[test]
    fn ejection_after_failures_in_a_row_then_one_trial() {
        let passive = Passive {
            eject_after: 3,
            eject_time: Duration::from_millis(50),
            eject_max_time: Duration::from_secs(1),
        };
        let s = set(&[("a:1", 1), ("b:1", 1)], Balance::RoundRobin);
        let a = s.member(0);
        assert!(a.health.failed(&a.spec, &passive, &"refused").is_none());
        assert!(a.health.failed(&a.spec, &passive, &"refused").is_none());
        let t = a
            .health
            .failed(&a.spec, &passive, &"refused")
            .expect("ejected");
        assert_eq!(t.member.state, BackendState::Ejected);
        assert!(
            t.member.reason.contains("3 failures in a row"),
            "{:?}",
            t.member
        );
        assert_eq!(counts(&s, 4, |_| ip(1)), [0, 4], "ejected takes nothing");
        std::thread::sleep(Duration::from_millis(60));
        // Cooldown over: exactly one trial goes to a, the rest to b until it reports.
        let trial = s.pick(ip(1), Tried::default()).unwrap();
        let trial = if trial.index == 0 {
            trial
        } else {
            s.pick(ip(1), Tried::default()).unwrap()
        };
        assert_eq!(trial.index, 0);
        assert_eq!(counts(&s, 4, |_| ip(1)), [0, 4]);
        // The trial fails: out again, for twice as long.
        let t = a
            .health
            .failed(&a.spec, &passive, &"refused")
            .expect("ejected again");
        assert!(
            t.member.reason.contains("(100ms): 4 failures in a row"),
            "{:?}",
            t.member
        );
        assert_eq!(t.member.ejections, 2);
        std::thread::sleep(Duration::from_millis(110));
        let mut tried = Tried::default();
        tried.add(1);
        let trial = s.pick(ip(1), tried).expect("the trial");
        let t = a.health.succeeded(&a.spec).expect("back");
        assert_eq!(t.member.state, BackendState::Up);
        drop(trial);
        assert_eq!(counts(&s, 4, |_| ip(1)), [2, 2]);
    }

    #[test]
    fn when_every_member_is_ejected_they_are_tried_anyway() {
        let passive = Passive {
            eject_after: 1,
            ..Passive::default()
        };
        let s = set(&[("a:1", 1)], Balance::RoundRobin);
        let a = s.member(0);
        a.health.failed(&a.spec, &passive, &"refused");
        assert_eq!(a.health.stats(&a.spec).state, BackendState::Ejected);
        assert!(s.pick(ip(1), Tried::default()).is_some());
    }

    #[test]
    fn active_checks_need_fall_failures_and_rise_successes() {
        let check = mc_proxy_shared::HealthCheck {
            rise: 2,
            fall: 3,
            ..Default::default()
        };
        let s = set(&[("a:1", 1)], Balance::RoundRobin);
        let a = s.member(0);
        let ms = Duration::from_millis(1);
        let fail = || a.health.probed(&a.spec, &check, Err("refused".into()), ms);
        let pass = || a.health.probed(&a.spec, &check, Ok(()), ms);
        assert_eq!(a.health.stats(&a.spec).state, BackendState::Unknown);
        assert!(fail().is_none() && fail().is_none());
        let up = pass().expect("the first success makes it up");
        assert_eq!(up.member.state, BackendState::Up);
        assert_eq!(up.member.reason, "the first check passed");
        assert!(fail().is_none() && fail().is_none());
        let down = fail().expect("down after 3 in a row");
        assert_eq!(down.member.state, BackendState::Down);
        assert!(
            down.member
                .reason
                .starts_with("3 checks failed in a row: refused")
        );
        assert!(
            s.pick(ip(1), Tried::default()).is_none(),
            "down is not tried"
        );
        assert!(pass().is_none());
        assert_eq!(pass().expect("up").member.state, BackendState::Up);
        assert!(s.pick(ip(1), Tried::default()).is_some());
    }

    #[test]
    fn an_ejection_reads_up_once_its_cooldown_is_over() {
        let passive = Passive {
            eject_after: 1,
            eject_time: Duration::from_millis(50),
            eject_max_time: Duration::from_secs(1),
        };
        let s = set(&[("a:1", 1), ("b:1", 1)], Balance::RoundRobin);
        let a = s.member(0);
        assert!(a.health.succeeded(&a.spec).is_some(), "unknown to up");
        let t = a.health.failed(&a.spec, &passive, &"refused").unwrap();
        assert!(
            t.member.reason.starts_with("ejected until "),
            "{:?}",
            t.member
        );
        std::thread::sleep(Duration::from_millis(60));
        let stats = a.health.stats(&a.spec);
        assert_eq!(stats.state, BackendState::Up);
        assert!(!stats.reason.contains("ejected until"), "{stats:?}");
        let t = a.health.observe(&a.spec, None).expect("published");
        assert_eq!(t.member.state, BackendState::Up);
        assert!(t.member.since_ms >= stats.since_ms);
        assert!(
            t.member.reason.contains("cooldown is over"),
            "{:?}",
            t.member
        );
    }

    #[test]
    fn a_changed_check_drops_the_old_results_and_a_removed_one_its_verdict() {
        let check = mc_proxy_shared::HealthCheck {
            fall: 1,
            ..Default::default()
        };
        let s = set(&[("a:1", 1)], Balance::RoundRobin);
        let a = s.member(0);
        a.health.observe(&a.spec, Some(&check));
        let ms = Duration::from_millis(1);
        let down = a
            .health
            .probed(&a.spec, &check, Err("status 500".into()), ms)
            .expect("down");
        assert_eq!(down.member.state, BackendState::Down);
        assert_eq!(
            down.member.last_check.as_ref().unwrap().error.as_deref(),
            Some("status 500")
        );
        let edited = mc_proxy_shared::HealthCheck {
            path: "/other".into(),
            ..check.clone()
        };
        assert!(a.health.observe(&a.spec, Some(&edited)).is_none());
        let stats = a.health.stats(&a.spec);
        assert_eq!(stats.last_check, None);
        assert!(!stats.reason.contains("500"), "{stats:?}");
        // A late result of the old check is dropped.
        a.health
            .probed(&a.spec, &check, Err("status 500".into()), ms);
        assert_eq!(a.health.stats(&a.spec).last_check, None);
        // The check removed: no verdict, nothing known.
        let t = a.health.observe(&a.spec, None).expect("no longer down");
        assert_eq!(t.member.state, BackendState::Unknown);
    }

    #[test]
    fn a_probe_is_not_due_while_one_runs_or_before_the_interval() {
        let check = mc_proxy_shared::HealthCheck::default();
        let s = set(&[("a:1", 1)], Balance::RoundRobin);
        let a = s.member(0);
        let now = Instant::now();
        assert!(a.health.probe_due(now));
        assert!(!a.health.probe_due(now), "one at a time");
        a.health
            .probed(&a.spec, &check, Ok(()), Duration::from_millis(1));
        assert!(!a.health.probe_due(Instant::now()));
        assert!(a.health.probe_due(Instant::now() + check.interval));
    }
}
