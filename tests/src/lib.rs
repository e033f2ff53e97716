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
