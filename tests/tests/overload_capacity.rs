//! A simulated platform with a known capacity C (`earshot simulate --capacity`): the overload
//! point `queries/overload.sql` finds in the ingested tables is within 5 % of C, the capacity served
//! never exceeds the largest concurrency observed, and an event whose audience stays under C has no
//! overload point.

use earshot_contract::Pseudonymizer;
use earshot_core::Settings;
use earshot_ingest::{Input, ingest};

/// The overload query's row for a simulated event of `listeners` against capacity `capacity`:
/// (overload roster, capacity served, largest connected), each possibly NULL.
fn overload(capacity: u64, listeners: u64, seed: u64) -> [Option<i64>; 3] {
    use arrow::array::{Array, AsArray};
    let cfg = earshot_sim::SimConfig {
        seed,
        listeners,
        capacity: Some(capacity),
        start_delay_ms: 0,
        mean_listen_ms: 120 * 60_000,
        ..earshot_sim::SimConfig::default()
    };
    let mut out = Vec::new();
    earshot_sim::simulate(&cfg, &mut out).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = Input::from_reader("file:sim.ndjson", std::io::Cursor::new(out));
    let p = Pseudonymizer::new(b"capacity-test");
    ingest(
        vec![input],
        dir.path(),
        Settings::default(),
        &p,
        2,
        true,
        &mut |_| {},
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ctx = rt.block_on(earshot_sql::context(dir.path())).unwrap();
    let sql = earshot_sql::queries::EMBEDDED
        .iter()
        .find(|(n, _)| *n == "overload")
        .unwrap()
        .1;
    let params = earshot_sql::Params::from_pairs([
        format!("stream={}", cfg.stream_id),
        "bound_ms=10000".to_string(),
        "min_attempts=20".to_string(),
        "threshold=0.1".to_string(),
        "persistence=2".to_string(),
    ])
    .unwrap();
    let limits = earshot_sql::Limits::default();
    let (_, batches) = rt
        .block_on(earshot_sql::run_with(&ctx, sql, &params, &limits))
        .unwrap();
    let b = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(b.num_rows(), 1, "overload gives one row");
    ["overload_roster", "capacity_served", "largest_connected"].map(|name| {
        let c = b.column_by_name(name).unwrap();
        let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Int64).unwrap();
        let c = c.as_primitive::<arrow::datatypes::Int64Type>();
        (!c.is_null(0)).then(|| c.value(0))
    })
}

#[test]
fn the_overload_point_is_the_capacity_and_capacity_served_was_observed() {
    for (capacity, seed) in [(1_000, 1), (2_500, 2), (5_000, 3), (12_000, 4)] {
        // Twice the capacity tries to listen, long enough to fill it half-way through.
        let [load, served, largest] = overload(capacity, 2 * capacity, seed);
        let load = load.unwrap_or_else(|| panic!("C = {capacity}: no overload point found"));
        let error = (load - capacity as i64).abs() as f64 / capacity as f64;
        assert!(
            error <= 0.05,
            "C = {capacity}: overload point at {load} listeners ({:.1} % off)",
            100.0 * error
        );
        let (served, largest) = (served.unwrap(), largest.unwrap());
        assert!(
            served <= largest,
            "C = {capacity}: capacity served {served} above the largest concurrency {largest}"
        );
    }
}

#[test]
fn an_audience_under_the_capacity_has_no_overload_point() {
    let [load, served, largest] = overload(50_000, 2_000, 5);
    assert_eq!(load, None, "no overload point under the capacity");
    // The largest audience that came is what the data can speak for.
    assert!(served.unwrap() <= largest.unwrap());
}
