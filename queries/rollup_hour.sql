-- rollup_hour: the timeline rolled up to hours, with distinct listeners from merged sketches.
-- Same columns as rollup_minute, from the rollups in one scan: a listener present in many buckets of
-- the hour counts once (empty when the bucket width does not divide an hour).
-- param stream: the stream_id
SELECT date_trunc('hour', bucket_start)                          AS hour,
       max(displayed_start)                                      AS displayed_max,
       max(roster_peak)                                          AS roster_peak,
       max(connected_peak)                                       AS connected_peak,
       sum(joins) FILTER (WHERE width_ms = 3600000)              AS joins,
       sum(drops) FILTER (WHERE width_ms = 3600000)              AS drops,
       max(present_listeners) FILTER (WHERE width_ms = 3600000)  AS present_listeners,
       max(connected_listeners) FILTER (WHERE width_ms = 3600000) AS connected_listeners,
       bool_and("final")                                         AS "final"
FROM rollups
WHERE stream_id = $stream
GROUP BY 1
HAVING count(*) FILTER (WHERE width_ms = 3600000) > 0
ORDER BY 1;
