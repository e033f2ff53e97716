-- rollup_hour: the timeline rolled up to hours, with distinct listeners from merged sketches.
-- Same columns as rollup_minute, from the hour rollups: a listener present in many buckets of the
-- hour counts once (empty when the bucket width does not divide an hour).
-- param stream: the stream_id
SELECT r.bucket_start          AS hour,
       d.displayed_max,
       r.roster_peak,
       r.connected_peak,
       r.joins,
       r.drops,
       r.present_listeners,
       r.connected_listeners,
       r."final"
FROM rollups r
JOIN (SELECT date_trunc('hour', bucket_start) AS hour, max(displayed_start) AS displayed_max
      FROM buckets WHERE stream_id = $stream GROUP BY 1) d
  ON d.hour = r.bucket_start
WHERE r.stream_id = $stream AND r.width_ms = 3600000
ORDER BY 1;
