-- rollup_minute: the timeline rolled up to minutes, with distinct listeners from merged sketches.
-- present_listeners were on the roster at some instant of the minute, connected_listeners received
-- audio at some instant of it (HyperLogLog estimates, standard error about 0.81 per cent). Read from
-- the minute rollups, which hold each minute's merged sketches and their estimates, so no sketch is
-- merged here (empty when the bucket width does not divide a minute).
-- param stream: the stream_id
SELECT r.bucket_start          AS minute,
       d.displayed_max,
       r.roster_peak,
       r.connected_peak,
       r.joins,
       r.drops,
       r.present_listeners,
       r.connected_listeners,
       r."final"
FROM rollups r
JOIN (SELECT date_trunc('minute', bucket_start) AS minute, max(displayed_start) AS displayed_max
      FROM buckets WHERE stream_id = $stream GROUP BY 1) d
  ON d.minute = r.bucket_start
WHERE r.stream_id = $stream AND r.width_ms = 60000
ORDER BY 1;
