//! Sketch bytes as read from a Parquet file or passed to `hll_count`/`hll_merge`: decoding never
//! panics, and bytes that decode survive a round trip and a merge with the same count. Half the
//! inputs get a valid checksum appended (the first byte chooses), so the fuzzer also reaches the
//! checks behind it — the sparse codes and the dense registers — instead of stopping at the sum.
#![no_main]

use earshot_sketch::Sketch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let mut bytes = body.to_vec();
    if mode & 1 == 1 {
        let sum = xxhash_rust::xxh3::xxh3_64(&bytes);
        bytes.extend_from_slice(&sum.to_le_bytes());
    }
    let Ok(mut sketch) = Sketch::from_bytes(&bytes) else {
        return;
    };
    let count = sketch.count();
    let encoded = sketch.to_bytes();
    let mut again = Sketch::from_bytes(&encoded).expect("a sketch reads its own bytes");
    assert_eq!(again.count(), count);
    let mut merged = again.clone();
    merged.merge(&sketch);
    assert_eq!(merged.count(), count, "a sketch merged with itself changed its count");
});
