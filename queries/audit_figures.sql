-- audit_figures: every figure of the reach audit for one stream, under the streams table's names.
-- The sketch columns are replaced by their estimates (hll_count), so the audit can show the exact
-- distinct counts beside the HyperLogLog estimates.
-- param stream: the stream_id
SELECT stream_id,
       scheduled_start,
       live_at,
       start_delay_ms,
       first_event,
       last_event,
       sessions,
       peak_displayed,
       peak_roster,
       peak_connected,
       listeners_joined,
       listeners_connected,
       listeners_connected_60s,
       failed_joins,
       abandoned_before_audio,
       ghost_sessions,
       ttfa_ms_p50,
       ttfa_ms_p90,
       hll_count(joined_hll)    AS joined_hll,
       hll_count(connected_hll) AS connected_hll
FROM streams
WHERE stream_id = $stream;
