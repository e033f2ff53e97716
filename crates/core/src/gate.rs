//! No single event moves time (contract §4, v1.1): the gate in front of [`Engine::offer`].
//!
//! Clocks on the emitting side are sometimes wrong by a minute, a day or fifty years. Two rules
//! keep one such event from changing anything but its own row:
//! - the engine's lateness is measured from a partition's *second*-largest `ts`
//!   ([`Engine::partition_time`]), so the largest alone never moves the watermark;
//! - an event more than J (`max_jump_ms`, default 1 h) ahead of the newest stored event of its
//!   partition — or the first event of a partition, which has no time yet, or an event more than J
//!   away from the one event a partition has stored — is a *jump*. A jump
//!   counts only once a later event of the same partition (another `event_id`) lands within J of
//!   it: then time really moved on. It is rejected as `ts_uncorroborated` as soon as a later event
//!   shows where the partition's time really is (an event that is no jump, or a jump confirmed in
//!   turn). Until then it waits, and so does every event behind it, so that the engine still sees
//!   each partition in arrival order.
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

/// Most events that may wait in one partition; past it the oldest waiting jump is rejected, so a
/// partition of nothing but disagreeing clocks cannot grow memory.
const MAX_WAITING: usize = 16;

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
        queue.push_back(Waiting { event, id, tag });
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
/// has a time (two stored events), an event more than J *behind* its one stored event is a jump
/// too: the first two events must agree before either direction is trusted.
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

fn agree(a: &Waiting<impl Sized>, b: &Waiting<impl Sized>, j: i64) -> bool {
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
            if established || queue.len() > MAX_WAITING {
                Some(Verdict::Uncorroborated)
            } else if at_end {
                if engine.partition_newest(partition).is_none() {
                    None
                } else {
                    Some(Verdict::Uncorroborated)
                }
            } else {
                return;
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

    fn ev(n: u64, ts: Millis) -> Event {
        Event {
            event_id: format!("e{n}").into(),
            kind: EventType::Display,
            ts,
            stream_id: "s".into(),
            listener_key: None,
            session_id: None,
            reason: None,
            displayed: Some(1),
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
