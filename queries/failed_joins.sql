-- failed_joins: join attempts that never received audio, and how many gave up, minute by minute.
-- A session is an attempt; it failed if it never connected. Failed sessions that ended are
-- abandoned; failed sessions that never ended stay on the roster as ghosts for good.
-- param stream: the stream_id
SELECT date_trunc('minute', join_ts)                                   AS minute,
       count(*)                                                        AS attempts,
       count(connect_ts)                                               AS got_audio,
       count(*) - count(connect_ts)                                    AS failed,
       sum(CASE WHEN connect_ts IS NULL AND end_ts IS NOT NULL THEN 1 ELSE 0 END) AS abandoned,
       sum(CASE WHEN connect_ts IS NULL AND end_ts IS NULL THEN 1 ELSE 0 END)     AS ghosts,
       round(100.0 * (count(*) - count(connect_ts)) / count(*), 1)    AS pct_failed
FROM sessions
WHERE stream_id = $stream
GROUP BY 1
ORDER BY 1;
