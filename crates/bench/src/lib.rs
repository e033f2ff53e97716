//! Inputs shared by the benchmarks in `benches/`: simulated NDJSON lines, parsed once.

use earshot_contract::{Event, Pseudonymizer, parse_event};
use earshot_sim::{SimConfig, simulate};

/// The lines of a default simulation of `listeners` listeners (malformed lines included).
pub fn simulated_lines(listeners: u64) -> Vec<Vec<u8>> {
    let cfg = SimConfig {
        listeners,
        ..SimConfig::default()
    };
    let mut out = Vec::new();
    simulate(&cfg, &mut out).expect("writing to memory cannot fail");
    out.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// The valid events among `lines`, in order, under the development pseudonym key.
pub fn valid_events(lines: &[Vec<u8>]) -> Vec<Event> {
    let keys = Pseudonymizer::development();
    lines
        .iter()
        .filter_map(|l| parse_event(l, &keys).ok())
        .collect()
}
