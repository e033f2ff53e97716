-- rollup_minute: the timeline rolled up to minutes, with distinct listeners from merged sketches.
-- present_listeners were on the roster at some instant of the minute, connected_listeners received
-- audio at some instant of it (HyperLogLog estimates, standard error about 0.81 per cent). Read from
-- the rollups in one scan: the minute rows hold each minute's merged sketches' estimates and sums, and
-- the finer rows (the buckets among them) give the largest displayed value at a bucket's start. No
-- sketch is merged here; empty when the bucket width does not divide a minute.
-- param stream: the stream_id
SELECT date_trunc('minute', bucket_start)                        AS minute,
       max(displayed_start)                                      AS displayed_max,
       max(roster_peak)                                          AS roster_peak,
       max(connected_peak)                                       AS connected_peak,
       sum(joins) FILTER (WHERE width_ms = 60000)                AS joins,
       sum(drops) FILTER (WHERE width_ms = 60000)                AS drops,
       max(present_listeners) FILTER (WHERE width_ms = 60000)    AS present_listeners,
       max(connected_listeners) FILTER (WHERE width_ms = 60000)  AS connected_listeners,
       bool_and("final")                                         AS "final"
FROM rollups
WHERE stream_id = $stream AND width_ms <= 60000
GROUP BY 1
HAVING count(*) FILTER (WHERE width_ms = 60000) > 0
ORDER BY 1;
