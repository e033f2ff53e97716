-- timeline: displayed vs roster vs actually connected, bucket by bucket.
-- roster is what a join/leave counter shows; connected is who was receiving audio; the gap between them
-- (ghosts) is sessions on the roster without audio. *_start is the value at the bucket's start,
-- *_peak the maximum within it; final is false while late events may still change the bucket.
-- param stream: the stream_id
SELECT bucket_start,
       displayed_start,
       roster_start,
       roster_peak,
       connected_start,
       connected_peak,
       roster_start - connected_start AS ghosts_start,
       joins,
       drops,
       "final"
FROM buckets
WHERE stream_id = $stream
ORDER BY bucket_start;
