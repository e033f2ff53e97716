-- rollup_hour: the timeline rolled up to hours, with distinct listeners from merged sketches.
-- Same columns as rollup_minute; the sketches of an hour's buckets are merged, so a listener
-- present in many buckets counts once.
-- param stream: the stream_id
SELECT date_trunc('hour', bucket_start)      AS hour,
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
