//! How long a restart spends on the saved engine state: loading it, then the first publish (which
//! rebuilds the live figures from every session), then saving it again.
//!   state-load DATA_DIR     (a Kafka ingest's data directory, default settings)

use std::time::Instant;

use earshot_core::{Engine, Settings};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = std::env::args()
        .nth(1)
        .ok_or("usage: state-load DATA_DIR")?;
    let path = std::path::Path::new(&data).join("current/engine.state");
    let t = Instant::now();
    let bytes = std::fs::read(&path)?;
    let read = t.elapsed();
    let t = Instant::now();
    let mut engine = Engine::load_state(&bytes, Settings::default())?;
    let load = t.elapsed();
    let t = Instant::now();
    engine.go_live();
    let snapshot = engine.publish(None);
    let publish = t.elapsed();
    let t = Instant::now();
    let mut out = Vec::with_capacity(bytes.len());
    engine.save_state(&mut out)?;
    let save = t.elapsed();
    println!(
        "{} MB: read {:.2} s, load {:.2} s, first publish {:.2} s ({} buckets), save {:.2} s; {} sessions, {:?}",
        bytes.len() / 1_000_000,
        read.as_secs_f64(),
        load.as_secs_f64(),
        publish.as_secs_f64(),
        snapshot.buckets.len(),
        save.as_secs_f64(),
        engine.session_count(),
        engine.memory(),
    );
    Ok(())
}
