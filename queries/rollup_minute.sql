-- rollup_minute: the timeline rolled up to minutes, with distinct listeners from merged sketches.
-- present_listeners were on the roster at some instant of the minute, connected_listeners received
-- audio at some instant of it (HyperLogLog estimates, standard error about 0.81 per cent).
-- param stream: the stream_id
SELECT date_trunc('minute', bucket_start)    AS minute,
       max(displayed_start)                  AS displayed_max,
       max(roster_peak)                      AS roster_peak,
       max(connected_peak)                   AS connected_peak,
       sum(joins)                            AS joins,
       sum(drops)                            AS drops,
       hll_count(hll_merge(present_hll))     AS present_listeners,
       hll_count(hll_merge(connected_hll))   AS connected_listeners,
       bool_and("final")                     AS "final"
FROM buckets
WHERE stream_id = $stream
GROUP BY 1
ORDER BY 1;
