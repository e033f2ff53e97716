//! One input line, as it arrives from a file or a Kafka message: parsing and redacting it never
//! panics, whatever the bytes.
#![no_main]

use std::sync::LazyLock;

use earshot_contract::{Pseudonymizer, parse_event, redact_listener_ids};
use libfuzzer_sys::fuzz_target;

static KEY: LazyLock<Pseudonymizer> = LazyLock::new(|| Pseudonymizer::new(b"fuzz"));

fuzz_target!(|line: &[u8]| {
    let parsed = parse_event(line, &KEY);
    let redacted = redact_listener_ids(line, &KEY);
    // A line that parses still parses once its listener id is replaced by the pseudonym.
    if let Ok(event) = parsed {
        let again = parse_event(&redacted, &KEY);
        assert!(again.is_ok(), "{event:?} no longer parses once redacted: {again:?}");
    }
});
