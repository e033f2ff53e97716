//! Measures the core's memory per open session: offers N joins of distinct sessions (each a
//! realistic 36-byte session id, one per listener) and counts the bytes the engine holds on the heap
//! (a counting global allocator: exact, unlike resident-set readings), and the resident set size.
//! Run: cargo run -p earshot-tests --example session_memory -- 1000000
//! Reports bytes per open session with and without the de-duplication set's share (16 bytes of
//! digest per distinct event_id, plus hash-table slack).

#![allow(unsafe_code)] // the counting allocator below is the only unsafe code in the repository

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use earshot_contract::{Event, EventType, Pseudonymizer};
use earshot_core::{Engine, Settings};

/// Counts live heap bytes, then defers to the system allocator.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; only a counter is updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let p = Pseudonymizer::new(b"memory");
    let mut engine = Engine::new(Settings::default());
    let base_ts = 1_723_507_200_000i64;
    let before = rss_bytes();
    let heap_before = LIVE.load(Ordering::Relaxed);
    for i in 0..n {
        let e = Event {
            event_id: format!("town-hall-main-{i}").into(),
            kind: EventType::Join,
            ts: base_ts + i as i64 / 10,
            stream_id: "town-hall-main".into(),
            listener_key: Some(p.pseudonym(&format!("user-{i}"))),
            session_id: Some(format!("{:036}", i).into()),
            reason: None,
            displayed: None,
            state: None,
            scheduled_start: None,
            client: Some("ios".into()),
            region: Some("us-east".into()),
            audio_ms: None,
        };
        engine.offer(0, &e);
    }
    let after = rss_bytes();
    assert_eq!(
        engine.session_count() as u64,
        n,
        "every join must open a session"
    );
    let heap = (LIVE.load(Ordering::Relaxed) - heap_before) as f64;
    let dedup = engine.dedup_bytes() as f64;
    let per = (after - before) as f64 / n as f64;
    println!(
        "{n} open sessions: {:.0} heap bytes per open session, of which {:.0} are the de-duplication set \
         (one 16-byte digest per distinct event_id, here the join) and {:.0} the sessions themselves; \
         resident set grew {per:.0} bytes per session",
        heap / n as f64,
        dedup / n as f64,
        (heap - dedup) / n as f64,
    );
}
