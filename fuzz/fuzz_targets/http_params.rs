//! An HTTP query string, as `GET /v1/streams/{id}/timeline?…` receives it, against a stream of any
//! span and bucket width: reading the window and binding the values as SQL parameters never
//! panics, and an accepted window is well formed.
#![no_main]

use std::collections::HashMap;

use earshot_serve::http::timeline_window;
use earshot_sql::Params;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let width = [10_000, 1, 60_000, 3_600_000, i64::MAX][data[0] as usize % 5];
    let lo = i64::from_le_bytes(data[1..9].try_into().unwrap());
    let hi = i64::from_le_bytes(data[9..17].try_into().unwrap());
    let q: HashMap<String, String> = form_urlencoded::parse(&data[17..]).into_owned().collect();
    if let Ok(w) = timeline_window(&q, width, lo, hi) {
        assert!(w.step > 0 && w.from < w.to, "{w:?}");
        assert_eq!(w.from.rem_euclid(w.step), 0, "{w:?}");
        assert!(w.to.rem_euclid(w.step) == 0 || w.to == i64::MAX, "{w:?}");
    }
    let _ = Params::from_pairs(q.iter().map(|(k, v)| format!("{k}={v}")));
});
