-- timeline_step: the timeline at a step coarser than the rows it reads, merging them, as dashboards poll it.
-- Reads the rollups of width $width (the bucket width, or 30 s, 1, 5 or 15 min, or 1 h), of which
-- $step_ms is a multiple. Each point starts at a multiple of the step since the epoch. displayed, roster and
-- connected are the values at the point's start; *_peak the maxima within it; the listener counts
-- merge the rows' sketches; final is true once every bucket of the point is final.
-- param stream: the stream_id
-- param width: the width of the rows read, in milliseconds: the bucket width, 30000, 60000, 300000, 900000 or 3600000
-- param step_ms: the step in milliseconds
-- param from: the first instant wanted (aligned down to the step by the caller)
-- param to: the instant after the last one wanted
SELECT to_timestamp_millis((CAST(bucket_start AS BIGINT) / $step_ms) * $step_ms) AS start,
       first_value(displayed_start ORDER BY bucket_start)            AS displayed,
       first_value(roster_start ORDER BY bucket_start)               AS roster,
       max(roster_peak)                                              AS roster_peak,
       first_value(connected_start ORDER BY bucket_start)            AS connected,
       max(connected_peak)                                           AS connected_peak,
       first_value(roster_start - connected_start ORDER BY bucket_start) AS ghosts,
       sum(joins)                                                    AS joins,
       sum(drops)                                                    AS drops,
       hll_count(hll_merge(present_hll))                             AS present_listeners,
       hll_count(hll_merge(connected_hll))                           AS connected_listeners,
       bool_and("final")                                             AS "final"
FROM rollups
WHERE stream_id = $stream AND width_ms = $width AND bucket_start >= $from AND bucket_start < $to
GROUP BY 1
ORDER BY 1;
