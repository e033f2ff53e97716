//! Redaction (contract §5): no input lets a listener id that a JSON parser would read survive
//! into a reject. The input is one or two messages (split at the first byte 0x1f), redacted in
//! sequence as the ingest does, so a key at the end of one and its value at the start of the next
//! are covered too (split between tokens; see the check below).
#![no_main]

use std::sync::LazyLock;

use earshot_contract::{Pseudonymizer, redact_continued};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

static KEY: LazyLock<Pseudonymizer> = LazyLock::new(|| Pseudonymizer::new(b"fuzz"));

/// Whether a key names the field as generously as the redactor must read it (any case, any
/// separators between the words), written independently of it.
fn names_field(key: &str) -> bool {
    let letters: String = key
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    letters == "listenerid"
}

/// Every value a parser reads under such a key, at any depth.
fn ids(v: &Value, found: &mut Vec<Value>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if names_field(k) {
                    // Masked whole, whatever it holds.
                    found.push(v.clone());
                } else {
                    ids(v, found);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| ids(v, found)),
        _ => {}
    }
}

/// What a redacted value may be: null, the mask, or a pseudonym (32 lowercase hex digits).
fn is_safe(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => {
            s == "[masked]" || (s.len() == 32 && s.bytes().all(|c| c.is_ascii_hexdigit()))
        }
        _ => false,
    }
}

/// Whether the bytes end inside a JSON string (an odd number of unescaped quotes).
fn ends_in_string(bytes: &[u8]) -> bool {
    let (mut inside, mut escaped) = (false, false);
    for &b in bytes {
        match b {
            _ if escaped => escaped = false,
            b'\\' if inside => escaped = true,
            b'"' => inside = !inside,
            _ => {}
        }
    }
    inside
}

/// `continued`: the message before ended on a key, so this one's first value (whatever it is, an
/// object too) is masked as that key's: it may then hold fewer keys than it had.
fn check(input: &[u8], redacted: &[u8], continued: bool) {
    assert!(redacted.len() <= input.len() + 64 * (input.len() / 8 + 1));
    let Ok(parsed) = serde_json::from_slice::<Value>(input) else {
        return;
    };
    let mut before = Vec::new();
    ids(&parsed, &mut before);
    let again: Value = serde_json::from_slice(redacted).unwrap_or_else(|e| {
        panic!(
            "valid JSON is no longer JSON once redacted ({e}): {:?}",
            String::from_utf8_lossy(redacted)
        )
    });
    let mut after = Vec::new();
    ids(&again, &mut after);
    if !continued {
        assert_eq!(before.len(), after.len(), "the redaction changed the keys");
    }
    for v in &after {
        assert!(is_safe(v), "a raw listener id survived: {v}");
    }
}

fuzz_target!(|data: &[u8]| {
    let (first, second) = match data.iter().position(|&b| b == 0x1f) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let (out, dangling) = redact_continued(first, &KEY, false);
    check(first, &out, false);
    if let Some(second) = second {
        let (out2, _) = redact_continued(second, &KEY, dangling);
        check(second, &out2, dangling);
        // Joined again where the first ended between tokens (a key with its value on the next
        // line), the two messages are one: what a parser reads there must be safe too. A split
        // inside a key or a string is not read as one key across messages (see the README).
        let between = dangling
            || (!ends_in_string(first)
                && matches!(first.trim_ascii_end().last(), None | Some(b'{' | b'[' | b',' | b':')));
        if !between {
            return;
        }
        let mut joined = out.clone();
        joined.extend_from_slice(&out2);
        if let Ok(v) = serde_json::from_slice::<Value>(&joined) {
            let mut found = Vec::new();
            ids(&v, &mut found);
            for v in &found {
                assert!(is_safe(v), "a raw listener id survived across messages: {v}");
            }
        }
    }
});
