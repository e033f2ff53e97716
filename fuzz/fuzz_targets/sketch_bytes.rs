//! Sketch bytes as read from a Parquet file or passed to `hll_count`/`hll_merge`: decoding never
//! panics, and bytes that decode survive a round trip and a merge with the same count.
#![no_main]

use earshot_sketch::Sketch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(mut sketch) = Sketch::from_bytes(bytes) else {
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
