-- timeline_points: the timeline at the width of stored rows, one row per point, reading no sketch.
-- Reads the rollups of width $width: the bucket width, or 30 s, 1, 5 or 15 min, or 1 h. The same
-- columns as timeline_step; the listener counts are the estimates stored with each row (equal to
-- hll_count of its sketch).
-- param stream: the stream_id
-- param width: the width of the rows read, in milliseconds: the bucket width, 30000, 60000, 300000, 900000 or 3600000
-- param from: the first instant wanted
-- param to: the instant after the last one wanted
SELECT bucket_start                          AS start,
       displayed_start                       AS displayed,
       roster_start                          AS roster,
       roster_peak,
       connected_start                       AS connected,
       connected_peak,
       roster_start - connected_start        AS ghosts,
       joins,
       drops,
       present_listeners,
       connected_listeners,
       "final"
FROM rollups
WHERE stream_id = $stream AND width_ms = $width AND bucket_start >= $from AND bucket_start < $to
ORDER BY 1;
