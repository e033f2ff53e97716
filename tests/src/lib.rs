//! Test support for earshot: the reference implementation of the contract and the random-scenario
//! generator the property tests use. The tests themselves live in `tests/tests/`.

pub mod reference;
pub mod scenario;

use earshot_contract::{Event, Pseudonymizer, parse_event};

/// Parses delivered lines, keeping the valid ones with their partitions, in order.
pub fn parse_all(lines: &[(u32, String)], pseudonyms: &Pseudonymizer) -> Vec<(u32, Event)> {
    lines
        .iter()
        .filter_map(|(p, l)| parse_event(l.as_bytes(), pseudonyms).ok().map(|e| (*p, e)))
        .collect()
}

/// Runs `events` through the time gate and the engine as an ingest does (every partition's input
/// ends at the end, in partition order). Returns the tables, the tally, and each event's verdict
/// by its index, in the order the verdicts were made.
pub fn run_through_gate(
    events: &[(u32, Event)],
    settings: earshot_core::Settings,
) -> (
    earshot_core::Snapshot,
    earshot_core::Tally,
    Vec<(usize, earshot_core::Verdict)>,
) {
    let mut engine = earshot_core::Engine::new(settings);
    let mut gate = earshot_core::TimeGate::new();
    let mut verdicts = Vec::new();
    let mut note = |_: Event, i: usize, v| verdicts.push((i, v));
    for (i, (p, e)) in events.iter().enumerate() {
        gate.offer(&mut engine, *p, e.clone(), i, &mut note);
    }
    let mut partitions: Vec<u32> = events.iter().map(|(p, _)| *p).collect();
    partitions.sort_unstable();
    partitions.dedup();
    for p in partitions {
        gate.finish(&mut engine, p, &mut note);
    }
    (engine.snapshot(None), engine.tally(), verdicts)
}
