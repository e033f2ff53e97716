//! No single event and no single device moves time (contract §4, v1.1 and v1.2): the gate in front
//! of [`Engine::offer`].
//!
//! Clocks on the emitting side are sometimes wrong by a minute, a day or fifty years, and a clock is
//! wrong per *device*: every event it stamps is off by the same amount. So the gate counts
//! *witnesses*, not events ([`witness`]): all the events of one listener (whatever its sessions)
//! are one witness, and a stream's host-side events (`display`, `stream_state`) are another. Two
//! rules keep one witness from changing anything but its own rows:
//! - the engine's lateness is measured from a partition's time ([`Engine::partition_time`]): the
//!   largest `ts` that two witnesses have each reached, so the leading witness alone never moves
//!   the watermark, however many events it sends;
//! - an event more than J (`max_jump_ms`, default 1 h) ahead of the newest stored event of its
//!   partition — or the first event of a partition, which has no time yet, or an event more than J
//!   away from the newest of a partition that has only one witness so far — is a *jump*. A jump
//!   counts only once a later event of the same partition *from another witness* lands within J of
//!   it: then time really moved on. It is rejected as `ts_uncorroborated` as soon as a later event
//!   shows where the partition's time really is (an event that is no jump, or a jump confirmed in
//!   turn). Until then it waits, and so does every event behind it, so that the engine still sees
//!   each partition in arrival order.
//!
//! What this costs: a partition's first events wait until a second witness arrives (up to
//! [`MAX_WAITING`] events, or the end of a file), where one event of the same device used to be
//! enough. Where witnesses cannot decide — a partition with no stored event when the wait is over,
//! that is, one witness or two that disagree — events decide as before v1.2: the first counts if
//! another event agrees with it within J, or if no other group of events agrees among itself
//! (then it is the partition's first event, on its own); otherwise it is rejected. A partition
//! that only one witness ever writes to has no time of its own: once its first event counts, its
//! events count as they come unless one is more than J from the newest.
//!
//! An event far *behind* a partition that has a time needs no gate: it is late (counted on its own,
//! changes no figure). What the
//! gate cannot tell apart is a partition whose only two events disagree; at the end of the input
//! such events count on their own, and an event that would stretch its stream over
//! [`crate::MAX_BUCKETS_PER_STREAM`] buckets is refused by the engine itself.
//!
//! Decisions depend only on the events and their order in the partition, never on timing: a
//! waiting event is not yet in the tables, so a Kafka checkpoint stops short of it and a restart
//! reads it again. The gate holds no state a replay needs besides the engine's.

use std::collections::VecDeque;

use earshot_contract::{Event, Millis};

use crate::{Engine, Outcome};

/// Most events that may wait in one partition; past it the oldest waiting jump is rejected (or, in
/// a partition that has no stored event yet, counted on its own), so a partition of nothing but
/// disagreeing clocks cannot grow memory.
pub const MAX_WAITING: usize = 16;

/// Who vouches for an event's clock. All the events of one listener are one witness, whatever
/// their sessions (a device, or one person's devices, with one clock); events without a listener
/// (`display`, `stream_state`) are their stream's host side, one witness per stream.
pub fn witness(event: &Event) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(event.stream_id.as_bytes());
    match (&event.listener_key, &event.session_id) {
        (Some(key), _) => {
            h.update(b"\0listener\0");
            h.update(&key.0);
        }
        (None, Some(session)) => {
            h.update(b"\0session\0");
            h.update(session.as_bytes());
        }
        (None, None) => h.update(b"\0host"),
    }
    h.digest()
}

/// What became of one event that went through the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The engine's decision (counted, late, duplicate, out of span).
    Offered(Outcome),
    /// A jump that no later event confirmed: rejected as `ts_uncorroborated`.
    Uncorroborated,
}

struct Waiting<T> {
    event: Event,
    id: u128,
    witness: u64,
    tag: T,
}

/// Per-partition queues of events waiting for their time to be confirmed. `T` is whatever the
/// caller needs back with each verdict (a line number, a Kafka offset).
pub struct TimeGate<T> {
    /// Indexed by partition.
    waiting: Vec<VecDeque<Waiting<T>>>,
}

impl<T> std::fmt::Debug for TimeGate<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeGate")
            .field(
                "waiting",
                &self.waiting.iter().map(VecDeque::len).sum::<usize>(),
            )
            .finish()
    }
}

impl<T> Default for TimeGate<T> {
    fn default() -> Self {
        TimeGate {
            waiting: Vec::new(),
        }
    }
}

impl<T> TimeGate<T> {
    pub fn new() -> TimeGate<T> {
        TimeGate::default()
    }

    /// Takes one valid event of `partition`, in arrival order; `decided` is called, in arrival
    /// order, for it and for every earlier waiting event whose fate it settles.
    pub fn offer(
        &mut self,
        engine: &mut Engine,
        partition: u32,
        event: Event,
        tag: T,
        decided: &mut dyn FnMut(Event, T, Verdict),
    ) {
        let slot = partition as usize;
        if self.waiting.get(slot).is_none_or(VecDeque::is_empty)
            && !is_jump(engine, partition, event.ts)
        {
            // The common case: nothing waits and time is where it was.
            let outcome = engine.offer(partition, &event);
            decided(event, tag, Verdict::Offered(outcome));
            return;
        }
        if self.waiting.len() <= slot {
            self.waiting.resize_with(slot + 1, VecDeque::new);
        }
        let queue = &mut self.waiting[slot];
        let id = xxhash_rust::xxh3::xxh3_128(event.event_id.as_bytes());
        let witness = witness(&event);
        queue.push_back(Waiting {
            event,
            id,
            witness,
            tag,
        });
        settle(engine, partition, queue, false, decided);
    }

    /// The end of a partition's input (a file's end): every waiting event is decided now. A jump
    /// that nothing confirmed is rejected, unless the partition has no time at all yet (then it is
    /// the partition's first event and counts on its own).
    pub fn finish(
        &mut self,
        engine: &mut Engine,
        partition: u32,
        decided: &mut dyn FnMut(Event, T, Verdict),
    ) {
        if let Some(queue) = self.waiting.get_mut(partition as usize) {
            settle(engine, partition, queue, true, decided);
        }
    }

    /// The tags of the events waiting in `partition`, oldest first (a Kafka checkpoint must stop
    /// before the first of them).
    pub fn waiting(&self, partition: u32) -> impl Iterator<Item = &T> {
        self.waiting
            .get(partition as usize)
            .into_iter()
            .flat_map(|q| q.iter().map(|w| &w.tag))
    }

    /// Events waiting, all partitions.
    pub fn waiting_count(&self) -> usize {
        self.waiting.iter().map(VecDeque::len).sum()
    }
}

/// Whether an event at `ts` would move its partition's time by more than J. Until the partition
/// has a time (stored events of two witnesses), an event more than J *behind* its newest is a jump
/// too: two witnesses must agree before either direction is trusted.
fn is_jump(engine: &Engine, partition: u32, ts: Millis) -> bool {
    let j = engine.settings().max_jump_ms;
    match engine.partition_newest(partition) {
        None => true,
        Some(newest) if engine.partition_time(partition).is_none() => {
            ts.abs_diff(newest) > j as u64
        }
        Some(newest) => ts > newest.saturating_add(j),
    }
}

/// Whether `b` confirms `a`: another event, of another witness, within J.
fn agree(a: &Waiting<impl Sized>, b: &Waiting<impl Sized>, j: i64) -> bool {
    a.witness != b.witness && agree_as_events(a, b, j)
}

/// Whether `b` is another event within J of `a`, whoever sent it (contract §4 v1.1's agreement,
/// for a partition no two witnesses have spoken for yet: see `settle`).
fn agree_as_events(a: &Waiting<impl Sized>, b: &Waiting<impl Sized>, j: i64) -> bool {
    a.id != b.id && a.event.ts.abs_diff(b.event.ts) <= j as u64
}

/// Decides every waiting event at the front of `queue` whose fate is known.
fn settle<T>(
    engine: &mut Engine,
    partition: u32,
    queue: &mut VecDeque<Waiting<T>>,
    at_end: bool,
    decided: &mut dyn FnMut(Event, T, Verdict),
) {
    let j = engine.settings().max_jump_ms;
    while let Some(head) = queue.front() {
        let verdict = if !is_jump(engine, partition, head.event.ts) {
            None
        } else if queue.iter().skip(1).any(|w| agree(head, w, j)) {
            // Confirmed by a later event: time really moved on.
            None
        } else {
            // Is the partition's time shown elsewhere: by a later event that is no jump, or by a
            // later jump that another event confirms?
            let established = (1..queue.len()).any(|k| {
                !is_jump(engine, partition, queue[k].event.ts)
                    || queue.iter().skip(k + 1).any(|w| agree(&queue[k], w, j))
            });
            let untimed = engine.partition_newest(partition).is_none();
            if established {
                Some(Verdict::Uncorroborated)
            } else if !(at_end || queue.len() > MAX_WAITING) {
                return;
            } else if !untimed {
                // Nothing more will come (or nothing more may wait): a jump nothing confirmed.
                Some(Verdict::Uncorroborated)
            } else {
                // A partition with no stored event, and no second witness to be had: witnesses
                // cannot decide, so events do, as before v1.2. The head counts if another event
                // agrees with it, or if no other group of events agrees among itself.
                let confirmed = queue.iter().skip(1).any(|w| agree_as_events(head, w, j));
                let elsewhere = (1..queue.len()).any(|k| {
                    queue
                        .iter()
                        .skip(k + 1)
                        .any(|w| agree_as_events(&queue[k], w, j))
                });
                if confirmed || !elsewhere {
                    None
                } else {
                    Some(Verdict::Uncorroborated)
                }
            }
        };
        let Some(w) = queue.pop_front() else { return };
        match verdict {
            Some(v) => decided(w.event, w.tag, v),
            None => {
                let outcome = engine.offer(partition, &w.event);
                decided(w.event, w.tag, Verdict::Offered(outcome));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;
    use earshot_contract::EventType;

    const MIN: i64 = 60_000;

    /// Event `n`, from a device of its own (listener `n`).
    fn ev(n: u64, ts: Millis) -> Event {
        device_ev(n, n, ts)
    }

    /// Event `n` of listener `device`'s session.
    fn device_ev(n: u64, device: u64, ts: Millis) -> Event {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&device.to_le_bytes());
        Event {
            event_id: format!("e{n}").into(),
            kind: EventType::Heartbeat,
            ts,
            stream_id: "s".into(),
            listener_key: Some(earshot_contract::ListenerKey(key)),
            session_id: Some(format!("session-{device}").into()),
            reason: None,
            displayed: None,
            state: None,
            scheduled_start: None,
            client: None,
            region: None,
            audio_ms: None,
        }
    }

    /// Runs `ts` through a gate as one partition, returns each event's verdict by its number.
    fn run(ts: &[Millis]) -> Vec<(u64, Verdict)> {
        let mut engine = Engine::new(Settings::default());
        let mut gate = TimeGate::new();
        let mut out = Vec::new();
        for (n, &t) in ts.iter().enumerate() {
            gate.offer(
                &mut engine,
                0,
                ev(n as u64, t),
                n as u64,
                &mut |_, tag, v| out.push((tag, v)),
            );
        }
        gate.finish(&mut engine, 0, &mut |_, tag, v| out.push((tag, v)));
        out.sort_by_key(|o| o.0);
        out
    }

    fn verdicts(ts: &[Millis]) -> Vec<Verdict> {
        run(ts).into_iter().map(|(_, v)| v).collect()
    }

    const C: Verdict = Verdict::Offered(Outcome::Counted);
    const L: Verdict = Verdict::Offered(Outcome::Late);
    const U: Verdict = Verdict::Uncorroborated;

    #[test]
    fn a_stray_ahead_is_rejected_and_changes_nothing_else() {
        let base = 1_000 * MIN;
        let day = 24 * 60 * MIN;
        assert_eq!(
            verdicts(&[base, base + 1_000, base + day, base + 2_000, base + 3_000]),
            vec![C, C, U, C, C]
        );
        // Last in the input: nothing confirms it.
        assert_eq!(verdicts(&[base, base + 1_000, base + day]), vec![C, C, U]);
    }

    #[test]
    fn a_stray_first_is_rejected_once_the_others_agree() {
        let base = 1_000 * MIN;
        assert_eq!(
            verdicts(&[0, base, base + 1_000, base + 2_000]),
            vec![U, C, C, C]
        );
        assert_eq!(
            verdicts(&[base + 90 * MIN * 1_000, base, base + 1_000]),
            vec![U, C, C]
        );
    }

    #[test]
    fn a_real_jump_is_confirmed_by_the_next_event() {
        let base = 1_000 * MIN;
        let later = base + 3 * 60 * MIN;
        assert_eq!(
            verdicts(&[base, base + 1_000, later, later + 1_000, later + 2_000]),
            vec![C, C, C, C, C]
        );
        // A stray between a real jump and its confirmation changes nothing.
        assert_eq!(
            verdicts(&[base, base + 1_000, later, 9 * base, later + 1_000]),
            vec![C, C, C, U, C]
        );
    }

    #[test]
    fn far_behind_is_late_not_held() {
        let base = 1_000 * MIN;
        assert_eq!(
            verdicts(&[base, base + 1_000, 5, base + 2_000]),
            vec![C, C, L, C]
        );
    }

    #[test]
    fn a_copy_of_the_stray_does_not_confirm_it() {
        let mut engine = Engine::new(Settings::default());
        let mut gate = TimeGate::new();
        let mut out = Vec::new();
        let base = 1_000 * MIN;
        let stray = base + 10 * 60 * MIN;
        for (n, (id, t)) in [
            (0, base),
            (1, base + 1),
            (2, stray),
            (2, stray),
            (3, base + 2),
        ]
        .into_iter()
        .enumerate()
        {
            gate.offer(&mut engine, 0, ev(id, t), n, &mut |_, tag, v| {
                out.push((tag, v))
            });
        }
        out.sort_by_key(|o| o.0);
        let v: Vec<Verdict> = out.into_iter().map(|o| o.1).collect();
        assert_eq!(v, vec![C, C, U, U, C]);
        assert_eq!(gate.waiting_count(), 0);
    }

    /// Runs `(device, ts)` events through a gate as one partition; verdicts by event number.
    fn run_devices(events: &[(u64, Millis)]) -> Vec<Verdict> {
        let mut engine = Engine::new(Settings::default());
        let mut gate = TimeGate::new();
        let mut out = Vec::new();
        for (n, &(device, t)) in events.iter().enumerate() {
            let event = device_ev(n as u64, device, t);
            gate.offer(&mut engine, 0, event, n, &mut |_, tag, v| {
                out.push((tag, v))
            });
        }
        gate.finish(&mut engine, 0, &mut |_, tag, v| out.push((tag, v)));
        out.sort_by_key(|o| o.0);
        out.into_iter().map(|o| o.1).collect()
    }

    #[test]
    fn one_device_never_confirms_itself() {
        let base = 1_000 * MIN;
        let day = 24 * 60 * MIN;
        // Device 9's clock is a day ahead; its six events come among everyone else's.
        let mut events = vec![(1, base), (2, base + 1_000)];
        for k in 0..6 {
            events.push((9, base + day + k * 10_000));
            events.push((3 + k as u64, base + 2_000 + k * 1_000));
        }
        let v = run_devices(&events);
        for (i, (device, _)) in events.iter().enumerate() {
            let want = if *device == 9 { U } else { C };
            assert_eq!(v[i], want, "event {i} of device {device}: {v:?}");
        }
        // Before v1.2 the device's second event confirmed its first, and every later event of
        // the others was late.
    }

    #[test]
    fn a_device_ahead_by_less_than_a_jump_moves_no_watermark() {
        let base = 1_000 * MIN;
        // Device 9 is 50 minutes ahead (under J) and sends many events; the others' events, a
        // minute apart, must not become late against its clock.
        let mut events = vec![(1, base), (2, base + 1_000)];
        for k in 0..10 {
            events.push((9, base + 50 * MIN + k * 1_000));
            events.push((3 + k as u64, base + 2_000 + k * MIN));
        }
        let v = run_devices(&events);
        assert!(v.iter().all(|x| *x == C), "{v:?}");
    }

    #[test]
    fn a_partition_of_one_device_counts_once_the_wait_is_over() {
        let base = 1_000 * MIN;
        let events: Vec<(u64, Millis)> = (0..40).map(|k| (7, base + k * 1_000)).collect();
        assert!(run_devices(&events).iter().all(|x| *x == C));
        // And at the end of a file, however few there are.
        let events: Vec<(u64, Millis)> = (0..3).map(|k| (7, base + k * 1_000)).collect();
        assert!(run_devices(&events).iter().all(|x| *x == C));
    }

    #[test]
    fn a_listener_and_its_stream_host_are_different_witnesses() {
        let mut display = device_ev(1, 1, 0);
        display.kind = EventType::Display;
        display.listener_key = None;
        display.session_id = None;
        let listener = device_ev(2, 1, 0);
        let same_listener_other_session = Event {
            session_id: Some("another".into()),
            ..device_ev(3, 1, 0)
        };
        assert_ne!(witness(&display), witness(&listener));
        assert_eq!(witness(&listener), witness(&same_listener_other_session));
        assert_ne!(witness(&listener), witness(&device_ev(4, 2, 0)));
    }

    #[test]
    fn waiting_is_bounded() {
        let base = 1_000 * MIN;
        let mut ts = vec![base, base + 1];
        ts.extend((1..40).map(|k| base + k * 2 * 60 * MIN));
        let v = verdicts(&ts);
        assert_eq!(v.len(), ts.len());
        assert!(v.iter().filter(|x| **x == U).count() >= 20);
    }
}
