//! The audit's figures and its sensitivity table against the independent reference of the contract:
//! on adversarial streams, every (liveness, minimum listen) row the audit recomputes from the stored
//! events equals the reference evaluated on the raw deliveries with those definitions.

use earshot_audit::{Claim, ClaimKind, LIVENESS_S, MIN_LISTEN_S};
use earshot_contract::Pseudonymizer;
use earshot_core::Settings;
use earshot_ingest::{Input, ingest};
use earshot_tests::parse_all;
use earshot_tests::reference::reference;
use earshot_tests::scenario::scenario;

#[test]
fn sensitivity_rows_equal_the_reference_under_each_definition() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let p = Pseudonymizer::new(b"audit-test");
    let base = Settings::default();
    let mut rows = 0;
    for seed in 100..112u64 {
        let lines = scenario(seed, base.lateness_ms);
        let mut text = String::new();
        let mut one_partition = Vec::new();
        for (_, l) in &lines {
            text.push_str(l);
            text.push('\n');
            one_partition.push((0u32, l.clone()));
        }
        let dir = tempfile::tempdir().unwrap();
        let input = Input::from_reader(
            "file:scenario.ndjson",
            std::io::Cursor::new(text.into_bytes()),
        );
        // Two counting threads: the audit must read the same from a sharded count.
        ingest(vec![input], dir.path(), base, &p, 2, true, &mut |_| {}).unwrap();
        let events = parse_all(&one_partition, &p);
        let (at_ingest, _) = reference(&events, &base);
        for want in &at_ingest.streams {
            let claim = Claim {
                value: want.peak_connected,
                kind: ClaimKind::Concurrent,
            };
            let report = rt
                .block_on(earshot_audit::build(
                    dir.path(),
                    &want.stream_id,
                    Some(claim),
                    (earshot_audit::LoadSettings::default(), None),
                    None,
                    None,
                ))
                .unwrap();
            let fig = |n: &str| report.figure(n).and_then(|f| f.value.int());
            assert_eq!(
                fig("peak_connected"),
                Some(want.peak_connected),
                "seed {seed}"
            );
            assert_eq!(fig("peak_roster"), Some(want.peak_roster), "seed {seed}");
            assert_eq!(fig("peak_displayed"), want.peak_displayed, "seed {seed}");
            assert_eq!(
                fig("listeners_joined"),
                Some(want.listeners_joined),
                "seed {seed}"
            );
            assert_eq!(
                fig("listeners_connected"),
                Some(want.listeners_connected),
                "seed {seed}"
            );
            assert_eq!(fig("failed_joins"), Some(want.failed_joins), "seed {seed}");
            assert_eq!(fig("start_delay_ms"), want.start_delay_ms, "seed {seed}");
            // A claim equal to the connected peak is supported by it.
            let verdict = report.verdict.as_ref().unwrap();
            assert!(
                verdict.comparisons[0].consistent,
                "seed {seed}: {verdict:?}"
            );

            assert_eq!(
                report.sensitivity.len(),
                LIVENESS_S.len() * MIN_LISTEN_S.len()
            );
            for s in &report.sensitivity {
                let settings = Settings {
                    liveness_ms: s.liveness_s * 1000,
                    min_listen_ms: s.min_listen_s * 1000,
                    ..base
                };
                let (snap, _) = reference(&events, &settings);
                let r = snap
                    .streams
                    .iter()
                    .find(|r| r.stream_id == want.stream_id)
                    .unwrap();
                let ctx = format!(
                    "seed {seed} stream {} L={} M={}",
                    r.stream_id, s.liveness_s, s.min_listen_s
                );
                assert_eq!(s.peak_connected, r.peak_connected, "{ctx}");
                assert_eq!(s.listeners_connected, r.listeners_connected, "{ctx}");
                assert_eq!(s.listeners_listened_min, r.listeners_connected_60s, "{ctx}");
                rows += 1;
            }
        }
    }
    assert!(rows > 50, "only {rows} rows compared");
}
