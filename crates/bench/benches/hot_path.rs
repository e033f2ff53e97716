//! The per-event path of an ingest, stage by stage: parse and validate, session update, sketch
//! work, Arrow batches to Parquet, and the snapshot that turns state into tables.
//!
//! `cargo bench -p earshot-bench` (add `-- --quick` for a fast pass). The input is a default
//! simulation of 2,000 listeners (about 100k lines, malformed ones included), built once.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use earshot_bench::{simulated_lines, valid_events};
use earshot_contract::{Pseudonymizer, parse_event};
use earshot_core::{Engine, Settings, Snapshot};
use earshot_sketch::{Sketch, Union, estimate_bytes, hash_bytes};
use earshot_store::{Generation, Manifest};

const LISTENERS: u64 = 2_000;

fn parse(c: &mut Criterion) {
    let lines = simulated_lines(LISTENERS);
    let bytes: usize = lines.iter().map(Vec::len).sum();
    let keys = Pseudonymizer::development();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("parse_event (validate + pseudonym)", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for l in &lines {
                ok += usize::from(parse_event(black_box(l), &keys).is_ok());
            }
            ok
        })
    });
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("serde_json::Value (no validation, for scale)", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for l in &lines {
                ok += usize::from(serde_json::from_slice::<serde_json::Value>(l).is_ok());
            }
            ok
        })
    });
    g.finish();
}

fn engine(c: &mut Criterion) {
    let events = valid_events(&simulated_lines(LISTENERS));
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("offer (dedup, lateness, session update)", |b| {
        b.iter(|| {
            let mut engine = Engine::new(Settings::default());
            for e in &events {
                black_box(engine.offer(0, e));
            }
            engine
        })
    });
    let mut full = Engine::new(Settings::default());
    for e in &events {
        full.offer(0, e);
    }
    g.throughput(Throughput::Elements(full.session_count() as u64));
    g.bench_function("snapshot (sessions, buckets, streams)", |b| {
        b.iter(|| black_box(full.snapshot(None)))
    });
    g.finish();
}

fn sketch(c: &mut Criterion) {
    let hashes: Vec<u64> = (0..100_000u64)
        .map(|i| hash_bytes(&i.to_le_bytes()))
        .collect();
    let mut g = c.benchmark_group("sketch");
    g.throughput(Throughput::Elements(hashes.len() as u64));
    g.bench_function("insert 100k distinct", |b| {
        b.iter(|| {
            let mut s = Sketch::new();
            for &h in &hashes {
                s.insert_hash(h);
            }
            s
        })
    });
    g.throughput(Throughput::Elements(1));
    for (name, n) in [("sparse (200)", 200), ("dense (100k)", hashes.len())] {
        let mut s = Sketch::new();
        for &h in &hashes[..n] {
            s.insert_hash(h);
        }
        let bytes = s.to_bytes();
        g.bench_function(format!("to_bytes {name}"), |b| {
            b.iter_batched(|| s.clone(), |mut s| s.to_bytes(), BatchSize::SmallInput)
        });
        g.bench_function(format!("from_bytes {name}"), |b| {
            b.iter(|| Sketch::from_bytes(black_box(&bytes)).map(|_| ()))
        });
        let other = {
            let mut o = Sketch::new();
            for &h in hashes[..n].iter().rev().take(n / 2) {
                o.insert_hash(h ^ 1);
            }
            o
        };
        g.bench_function(format!("merge {name}"), |b| {
            b.iter_batched(
                || s.clone(),
                |mut s| {
                    s.merge(&other);
                    s
                },
                BatchSize::SmallInput,
            )
        });
        // What hll_merge and hll_count do: on the stored bytes, no library structure.
        let mut o = other.clone();
        let other_bytes = o.to_bytes();
        g.bench_function(format!("union on bytes + to_bytes {name}"), |b| {
            b.iter(|| {
                let mut u = Union::new();
                u.add_bytes(black_box(&bytes))
                    .and_then(|()| u.add_bytes(&other_bytes))?;
                Ok::<_, earshot_sketch::SketchError>(u.to_bytes())
            })
        });
        g.bench_function(format!("estimate on bytes {name}"), |b| {
            b.iter(|| estimate_bytes(black_box(&bytes)))
        });
    }
    g.finish();
}

fn store(c: &mut Criterion) {
    let events = valid_events(&simulated_lines(LISTENERS));
    let mut g = c.benchmark_group("store");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("events: Arrow batches + Parquet (zstd) + publish", |b| {
        b.iter_batched(
            || tempfile::tempdir().expect("temporary directory"),
            |dir| {
                let mut generation = Generation::begin(dir.path()).expect("begin");
                for (i, e) in events.iter().enumerate() {
                    generation
                        .push_event(e.clone(), false, "file:bench:", i as u64 + 1)
                        .expect("push");
                }
                generation
                    .commit(&Snapshot::default(), &Manifest::default())
                    .expect("commit");
                dir
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, parse, engine, sketch, store);
criterion_main!(benches);
