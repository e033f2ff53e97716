-- timeline_points: the timeline at the width of a stored source, one row per point, reading no sketch.
-- The source is the buckets ($width = the bucket width) or the minute or hour rollups ($width = 60000
-- or 3600000). The same columns as timeline_step; the listener counts are the estimates stored with
-- each row (equal to hll_count of its sketch).
-- param stream: the stream_id
-- param width: the source's width in milliseconds: the bucket width, 60000 or 3600000
-- param from: the first instant wanted
-- param to: the instant after the last one wanted
WITH source AS (
    SELECT * FROM buckets
    WHERE stream_id = $stream AND width_ms = $width AND bucket_start >= $from AND bucket_start < $to
    UNION ALL
    SELECT * FROM rollups
    WHERE stream_id = $stream AND width_ms = $width AND bucket_start >= $from AND bucket_start < $to
)
SELECT CAST(bucket_start AS BIGINT)          AS start_ms,
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
FROM source
ORDER BY 1;
