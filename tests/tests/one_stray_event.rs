//! Contract §4 (v1.1, v1.2): no single event, and no single device, moves time. One event with a wrong clock — any `ts` far from
//! its partition's (more than the maximum jump plus the lateness), at any position, in any stream,
//! of any type — changes no other event's outcome and no figure but its own.
//!
//! An event only minutes ahead is indistinguishable from a real one: it counts, and it may confirm
//! the largest real `ts` before it, moving the partition's time there. The second test bounds that:
//! it never makes late an event that the largest *real* `ts` before it would not already make late.

use earshot_contract::{Event, Pseudonymizer, format_rfc3339_ms};
use earshot_core::{Outcome, Settings, Snapshot, Verdict};
use earshot_sim::Rng;
use earshot_tests::reference::reference;
use earshot_tests::scenario::scenario;
use earshot_tests::{parse_all, run_through_gate};
use proptest::prelude::*;

/// Every event through the gate and the engine, as an ingest does; each event's verdict by index.
fn run(events: &[(u32, Event)], settings: Settings) -> (Snapshot, Vec<Verdict>) {
    let (snapshot, _, decided) = run_through_gate(events, settings);
    let mut verdicts = vec![None; events.len()];
    for (i, v) in decided {
        verdicts[i] = Some(v);
    }
    let verdicts = verdicts
        .into_iter()
        .map(|v| v.expect("every event is decided by the end"))
        .collect();
    (snapshot, verdicts)
}

/// The line with its `ts` moved by `by` ms (lines that do not have one are kept as they are).
fn shift_ts(line: &str, by: i64) -> String {
    const KEY: &str = r#""ts":""#;
    let Some(start) = line.find(KEY).map(|i| i + KEY.len()) else {
        return line.to_owned();
    };
    let Some(len) = line[start..].find('"') else {
        return line.to_owned();
    };
    match earshot_contract::parse_rfc3339_ms(&line[start..start + len]) {
        Some(ts) => format!(
            "{}{}{}",
            &line[..start],
            format_rfc3339_ms(ts + by),
            &line[start + len..]
        ),
        None => line.to_owned(),
    }
}

/// How far from the scenario's events a stray's `ts` is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Distance {
    /// More than J plus the lateness from every event of the scenario, ahead or behind.
    Far,
    /// Up to five minutes ahead of every event of the scenario: within J.
    Near,
}

/// A valid event line with a wrong clock at `distance`, up to a century away; in an existing stream
/// or a new one.
fn stray_line(rng: &mut Rng, lo: i64, hi: i64, settings: &Settings, distance: Distance) -> String {
    let margin = settings.max_jump_ms + settings.lateness_ms + 1;
    const CENTURY: i64 = 100 * 365 * 86_400_000;
    let mode = match distance {
        Distance::Far => rng.next_u64() % 4,
        Distance::Near => 4,
    };
    let ts = match mode {
        4 => hi + 1 + rng.range(0, 300_000),
        0 => hi + margin + rng.range(0, 120_000), // minutes ahead of the rest
        1 => hi + margin + rng.range(0, CENTURY), // up to 2099 and beyond
        2 => (lo - margin - rng.range(0, 86_400_000)).max(0), // a day or so behind
        _ => rng.range(0, (lo - margin).max(1)),  // 1970 and after
    };
    let stream = *rng.pick(&["s0", "s1", "s2", "elsewhere"]);
    let session = *rng.pick(&["x0", "x1", "x3", "stray-session"]);
    let listener = *rng.pick(&["l0", "l1", "l9"]);
    let ts = format_rfc3339_ms(ts);
    match rng.next_u64() % 6 {
        0 => format!(
            r#"{{"v":1,"event_id":"stray","type":"display","ts":"{ts}","stream_id":"{stream}","displayed":999}}"#
        ),
        k => {
            let kind = ["join", "connect", "heartbeat", "leave", "drop"][(k - 1) as usize];
            format!(
                r#"{{"v":1,"event_id":"stray","type":"{kind}","ts":"{ts}","stream_id":"{stream}","listener_id":"{listener}","session_id":"{session}","reason":"timeout"}}"#
            )
        }
    }
}

/// Inserts one stray event into a random scenario and checks that nothing else changed (far), or
/// that what changed is bounded (near). Returns the stray's verdict, or `None` when the scenario had
/// no partition of two events to put it in.
fn check(seed: u64, settings: Settings, distance: Distance) -> Option<Verdict> {
    let p = Pseudonymizer::new(b"stray");
    // Scenarios start at the epoch; move them to 2024 so that a clock can also be wrong backwards.
    let base_lines: Vec<(u32, String)> = scenario(seed, settings.lateness_ms)
        .into_iter()
        .map(|(q, l)| (q, shift_ts(&l, 1_704_067_200_000)))
        .collect();
    let base = parse_all(&base_lines, &p);
    let (lo, hi) = (
        base.iter().map(|(_, e)| e.ts).min()?,
        base.iter().map(|(_, e)| e.ts).max()?,
    );
    // A partition needs two stored events of its own (counted or late, not copies of another
    // partition's) for a time to exist: with one, it and a stray are indistinguishable (see
    // ARCHITECTURE.md).
    let mut rng = Rng::new(seed ^ 0x0057_42a7);
    let (_, base_verdicts) = run(&base, settings);
    let partitions: Vec<u32> = (0..4)
        .filter(|q| {
            base.iter()
                .zip(&base_verdicts)
                .filter(|((p, _), v)| {
                    p == q && matches!(v, Verdict::Offered(Outcome::Counted | Outcome::Late))
                })
                .count()
                >= 2
        })
        .collect();
    if partitions.is_empty() {
        return None;
    }
    let partition = partitions[rng.range(0, partitions.len() as i64) as usize];
    let at = rng.range(0, base.len() as i64 + 1) as usize;
    let stray = stray_line(&mut rng, lo, hi, &settings, distance);
    let mut lines = base_lines.clone();
    // `at` counts parsed events; find the matching line position.
    let mut valid_seen = 0;
    let mut line_at = lines.len();
    for (k, (_, l)) in base_lines.iter().enumerate() {
        if valid_seen == at {
            line_at = k;
            break;
        }
        if earshot_contract::parse_event(l.as_bytes(), &p).is_ok() {
            valid_seen += 1;
        }
    }
    lines.insert(line_at, (partition, stray.clone()));
    let with = parse_all(&lines, &p);
    let stray_index = with
        .iter()
        .position(|(_, e)| e.event_id == "stray")
        .expect("the stray parses");

    let (want, want_verdicts) = run(&base, settings);
    let (got, got_verdicts) = run(&with, settings);
    let mut others = got_verdicts.clone();
    let stray_verdict = others.remove(stray_index);
    let dump = || format!("seed {seed}, stray at {stray_index} in p{partition}: {stray}");
    if distance == Distance::Near {
        // Every change is an event made late that the largest real ts before it in its partition
        // (the contract's v1 watermark, strays left out) already puts behind the lateness.
        for (k, (got_v, want_v)) in others.iter().zip(&want_verdicts).enumerate() {
            if got_v == want_v {
                continue;
            }
            let (q, e) = &base[k];
            let newest_real = base[..k]
                .iter()
                .filter(|(p, _)| p == q)
                .map(|(_, e)| e.ts)
                .max();
            let made_late = *want_v == Verdict::Offered(Outcome::Counted)
                && *got_v == Verdict::Offered(Outcome::Late)
                && newest_real.is_some_and(|n| e.ts < n - settings.lateness_ms);
            // Or, when the stray confirms a partition's first event sooner, which of two copies
            // of one event_id in different partitions counts first (contract §4's one exception
            // to "never on how partitions interleave").
            let duplicate = Verdict::Offered(Outcome::Duplicate);
            let other_copy = base.iter().any(|(p, o)| p != q && o.event_id == e.event_id);
            let copy_swapped = (*want_v == duplicate) != (*got_v == duplicate) && other_copy;
            assert!(
                made_late || copy_swapped,
                "event {k} went from {want_v:?} to {got_v:?}: {}",
                dump()
            );
        }
        let (reference_with, _) = reference(&with, &settings);
        assert_eq!(got, reference_with, "{}", dump());
        return Some(stray_verdict);
    }
    assert_eq!(
        others,
        want_verdicts,
        "another event's outcome changed: {}",
        dump()
    );
    match stray_verdict {
        Verdict::Uncorroborated
        | Verdict::Offered(Outcome::OutOfSpan)
        | Verdict::Offered(Outcome::Late) => {
            // Rejected, or kept as late: it changes no figure at all.
            assert_eq!(got, want, "a figure changed: {}", dump());
        }
        Verdict::Offered(Outcome::Counted) => {
            // Counted on its own: the figures are those of the scenario with it, and every stream
            // it is not in is untouched.
            let (reference_with, _) = reference(&with, &settings);
            assert_eq!(got, reference_with, "{}", dump());
            let stray_stream = &with[stray_index].1.stream_id;
            let untouched = |s: &Snapshot| {
                s.streams
                    .iter()
                    .filter(|r| &r.stream_id != stray_stream)
                    .cloned()
                    .collect::<Vec<_>>()
            };
            assert_eq!(untouched(&got), untouched(&want), "{}", dump());
        }
        Verdict::Offered(Outcome::Duplicate) => panic!("the stray's id is unique: {}", dump()),
    }
    Some(stray_verdict)
}

#[test]
fn hundreds_of_strays_change_nothing_else() {
    let mut tried = 0;
    let mut by_verdict = std::collections::BTreeMap::new();
    for seed in 0..400 {
        if let Some(v) = check(seed, Settings::default(), Distance::Far) {
            tried += 1;
            *by_verdict.entry(format!("{v:?}")).or_insert(0) += 1;
        }
    }
    println!("strays by verdict: {by_verdict:?}");
    assert!(tried > 300, "{tried}");
    // The strays must exercise the rules, not slip through one path.
    assert!(
        by_verdict.get("Uncorroborated").copied().unwrap_or(0) > 50,
        "{by_verdict:?}"
    );
    assert!(
        by_verdict.get("Offered(Late)").copied().unwrap_or(0) > 20,
        "{by_verdict:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn one_stray_event_changes_no_other_outcome(
        seed in any::<u64>(),
        lateness in prop_oneof![Just(60_000i64), 0i64..120_000],
        jump in prop_oneof![Just(3_600_000i64), 600_000i64..7_200_000],
    ) {
        let settings = Settings {
            lateness_ms: lateness,
            max_jump_ms: jump,
            ..Settings::default()
        };
        let _ = check(seed, settings, Distance::Far);
    }

    #[test]
    fn an_event_minutes_ahead_moves_time_no_further_than_a_real_one(
        seed in any::<u64>(),
        lateness in prop_oneof![Just(60_000i64), 0i64..120_000],
    ) {
        let settings = Settings {
            lateness_ms: lateness,
            ..Settings::default()
        };
        let _ = check(seed, settings, Distance::Near);
    }
}

/// Contract §4 (v1.2): no single device moves time. A whole session — any number of events, any
/// types — whose device's clock is far off (more than J plus the lateness, ahead or behind),
/// interleaved anywhere in a partition that has a time: every other event's outcome and every
/// figure stay as they were. Returns how the device's events were decided, or `None` when the
/// scenario had no partition with two witnesses.
fn check_device(seed: u64, settings: Settings, events: usize) -> Option<Vec<Verdict>> {
    let p = Pseudonymizer::new(b"stray");
    let base_lines: Vec<(u32, String)> = scenario(seed, settings.lateness_ms)
        .into_iter()
        .map(|(q, l)| (q, shift_ts(&l, 1_704_067_200_000)))
        .collect();
    let base = parse_all(&base_lines, &p);
    let (lo, hi) = (
        base.iter().map(|(_, e)| e.ts).min()?,
        base.iter().map(|(_, e)| e.ts).max()?,
    );
    let (_, base_verdicts) = run(&base, settings);
    // A partition has a time once two witnesses (listeners, or a stream's host side) have stored
    // events in it.
    let partitions: Vec<u32> = (0..4)
        .filter(|q| {
            let witnesses: std::collections::BTreeSet<u64> = base
                .iter()
                .zip(&base_verdicts)
                .filter(|((p, _), v)| {
                    p == q && matches!(v, Verdict::Offered(Outcome::Counted | Outcome::Late))
                })
                .map(|((_, e), _)| earshot_core::witness(e))
                .collect();
            witnesses.len() >= 2
        })
        .collect();
    if partitions.is_empty() {
        return None;
    }
    let mut rng = Rng::new(seed ^ 0x00de_71ce);
    let partition = partitions[rng.range(0, partitions.len() as i64) as usize];
    let margin = settings.max_jump_ms + settings.lateness_ms + 1;
    let (start, step) = if rng.next_u64().is_multiple_of(3) {
        ((lo - margin - 86_400_000).max(0), 10_000) // a day behind
    } else {
        (hi + margin + rng.range(0, 86_400_000), 10_000) // up to a day ahead
    };
    let stream = *rng.pick(&["s0", "s1", "s2"]);
    // After the partition has a time: its line where a second witness first shows up. (Before
    // that, a device that sends more than the gate may hold waiting is indistinguishable from the
    // partition's real time: see the gate's module documentation.)
    let mut seen = std::collections::BTreeSet::new();
    let timed = base_lines.iter().position(|(q, l)| {
        *q == partition
            && earshot_contract::parse_event(l.as_bytes(), &p)
                .is_ok_and(|e| seen.insert(earshot_core::witness(&e)) && seen.len() == 2)
    })?;
    let mut lines = base_lines.clone();
    for k in 0..events {
        let kind = ["join", "connect", "heartbeat", "heartbeat", "leave", "drop"][k.min(5)];
        let ts = format_rfc3339_ms(start + k as i64 * step);
        let line = format!(
            r#"{{"v":1,"event_id":"device-{k}","type":"{kind}","ts":"{ts}","stream_id":"{stream}","listener_id":"the-device","session_id":"device-session","reason":"timeout"}}"#
        );
        // Somewhere after the device's previous event, anywhere in the input.
        let after = lines
            .iter()
            .position(|(_, l)| l.contains(&format!("\"device-{}\"", k.wrapping_sub(1))))
            .map_or(timed + 1, |i| i + 1);
        let at = rng.range(after as i64, lines.len() as i64 + 1) as usize;
        lines.insert(at, (partition, line));
    }
    let with = parse_all(&lines, &p);
    let (want, want_verdicts) = run(&base, settings);
    let (got, got_verdicts) = run(&with, settings);
    let mut device = Vec::new();
    let mut others = Vec::new();
    for ((_, e), v) in with.iter().zip(&got_verdicts) {
        if e.event_id.starts_with("device-") {
            device.push(*v);
        } else {
            others.push(*v);
        }
    }
    let dump = || format!("seed {seed}, {events} device events in p{partition}, from {start}");
    assert_eq!(
        others,
        want_verdicts,
        "another event's outcome changed: {}",
        dump()
    );
    for v in &device {
        assert!(
            matches!(
                v,
                Verdict::Uncorroborated | Verdict::Offered(Outcome::Late | Outcome::OutOfSpan)
            ),
            "a device event was {v:?}: {}",
            dump()
        );
    }
    assert_eq!(got, want, "a figure changed: {}", dump());
    let (reference_with, _) = reference(&with, &settings);
    assert_eq!(got, reference_with, "{}", dump());
    Some(device)
}

#[test]
fn a_device_with_a_wrong_clock_changes_nothing_else() {
    let mut tried = 0;
    let mut by_verdict = std::collections::BTreeMap::new();
    for seed in 0..200 {
        let events = 1 + (seed as usize % 8);
        if let Some(vs) = check_device(seed, Settings::default(), events) {
            tried += 1;
            for v in vs {
                *by_verdict.entry(format!("{v:?}")).or_insert(0) += 1;
            }
        }
    }
    println!("device events by verdict: {by_verdict:?}");
    assert!(tried > 120, "{tried}");
    assert!(
        by_verdict.get("Uncorroborated").copied().unwrap_or(0) > 100,
        "{by_verdict:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, .. ProptestConfig::default() })]

    #[test]
    fn a_whole_session_with_a_wrong_clock_changes_no_other_outcome(
        seed in any::<u64>(),
        events in 1usize..12,
        lateness in prop_oneof![Just(60_000i64), 0i64..120_000],
        jump in prop_oneof![Just(3_600_000i64), 600_000i64..7_200_000],
    ) {
        let settings = Settings {
            lateness_ms: lateness,
            max_jump_ms: jump,
            ..Settings::default()
        };
        let _ = check_device(seed, settings, events);
    }
}
