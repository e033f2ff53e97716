//! Sketch bytes as read from a Parquet file or passed to `hll_count`/`hll_merge`: decoding never
//! panics, and bytes that decode survive a round trip and a merge with the same count. Half the
//! inputs get a valid checksum appended (the first byte chooses), so the fuzzer also reaches the
//! checks behind it — the sparse codes and the dense registers — instead of stopping at the sum.
//! The byte-level path (`estimate_bytes`, `Union`, what `hll_count`/`hll_merge` use) must agree
//! with the library on every input: the same verdict, the same estimate, the same union bytes.
#![no_main]

use earshot_sketch::{Sketch, Union, estimate_bytes};
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
        assert!(estimate_bytes(&bytes).is_err(), "the byte path read what the library refused");
        assert!(Union::new().add_bytes(&bytes).is_err());
        return;
    };
    assert_eq!(
        estimate_bytes(&bytes).expect("the byte path reads what the library reads").to_bits(),
        sketch.estimate().to_bits()
    );
    let count = sketch.count();
    let encoded = sketch.to_bytes();
    let mut again = Sketch::from_bytes(&encoded).expect("a sketch reads its own bytes");
    assert_eq!(again.count(), count);
    let mut merged = again.clone();
    merged.merge(&sketch);
    assert_eq!(merged.count(), count, "a sketch merged with itself changed its count");
    // A union on the bytes with a sketch of a few hundred values equals the library's merge.
    let mut other = Sketch::new();
    for i in 0..300u32 {
        other.insert(&i.to_le_bytes());
    }
    let mut union = Union::new();
    union.add_bytes(&bytes).expect("checked above");
    union.add_bytes(&other.to_bytes()).expect("a sketch reads its own bytes");
    let mut library = sketch.clone();
    library.merge(&other);
    assert_eq!(union.to_bytes(), Some(library.to_bytes()));
    assert_eq!(union.estimate().to_bits(), library.estimate().to_bits());
});
