//! The JSON Schema in `schemas/` and the Rust parser judge the same corpus the same way, and every
//! case is rejected with exactly the reason code the corpus expects.
//!
//! Where JSON Schema cannot express a rule of the contract, the corpus says so (`schema_gap`) and this
//! test checks that the gap is exactly that: the schema accepts, the parser rejects.

use std::process::Command;

use earshot_contract::{Pseudonymizer, parse_event};
use serde_json::Value;

#[test]
fn schema_and_parser_agree_on_the_corpus() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let corpus: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/tests/corpus/events.json")).unwrap(),
    )
    .unwrap();
    let out = Command::new("python3")
        .arg(format!("{root}/tests/schema_check.py"))
        .output()
        .expect("python3 must be installed (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "schema_check.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts.len(), corpus.len());
    let p = Pseudonymizer::new(b"corpus");
    let mut codes_seen = std::collections::BTreeSet::new();
    for (case, verdict) in corpus.iter().zip(&verdicts) {
        let name = case["name"].as_str().unwrap();
        assert_eq!(verdict["name"], case["name"]);
        let line = case["line"].as_str().unwrap();
        let parsed = parse_event(line.as_bytes(), &p);
        let want_code = case["code"].as_str();
        match (&parsed, want_code) {
            (Ok(_), None) => {}
            (Err(r), Some(code)) => {
                assert_eq!(r.code.as_str(), code, "{name}: {}", r.message);
                codes_seen.insert(code.to_owned());
            }
            (Ok(_), Some(code)) => panic!("{name}: parser accepted, corpus expects {code}"),
            (Err(r), None) => panic!(
                "{name}: parser rejected ({}), corpus expects valid",
                r.reason()
            ),
        }
        let schema_valid = verdict["schema_valid"].as_bool().unwrap();
        if case.get("schema_gap").is_some() {
            assert!(
                schema_valid && parsed.is_err(),
                "{name}: documented gap no longer holds"
            );
        } else {
            assert_eq!(
                schema_valid,
                parsed.is_ok(),
                "{name}: schema and parser disagree"
            );
        }
    }
    // Every reason code but not_utf8 (a JSON text corpus cannot hold invalid UTF-8; the parser's
    // unit tests cover it) appears in the corpus.
    for code in earshot_contract::RejectCode::ALL {
        // The time codes are decided about valid events (the gate's and core's tests cover them).
        if code != earshot_contract::RejectCode::NotUtf8 && code.from_parser() {
            assert!(
                codes_seen.contains(code.as_str()),
                "corpus lacks a case for {}",
                code.as_str()
            );
        }
    }
}
