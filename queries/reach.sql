-- reach: how many distinct listeners joined, ever heard audio, and listened at least a minute.
-- The exact counts (from every session) sit beside the sketch estimates (HyperLogLog, standard error
-- about 0.81 per cent), so a reader can see that the sketches, which merge across buckets and days, agree.
-- param stream: the stream_id
SELECT stream_id,
       listeners_joined,
       hll_count(joined_hll)                            AS listeners_joined_est,
       listeners_connected,
       hll_count(connected_hll)                         AS listeners_connected_est,
       listeners_connected_60s,
       peak_displayed,
       peak_roster,
       peak_connected,
       round(100.0 * listeners_connected / nullif(listeners_joined, 0), 1)     AS pct_joined_heard_audio,
       round(100.0 * listeners_connected_60s / nullif(listeners_joined, 0), 1) AS pct_joined_listened_60s,
       round(CAST(peak_displayed AS DOUBLE) / nullif(peak_connected, 0), 2)      AS displayed_over_connected
FROM streams
WHERE stream_id = $stream;
