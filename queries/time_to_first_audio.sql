-- time_to_first_audio: how long connected sessions waited between joining and their first audio.
-- Waiting before the stream went live counts. Bands are half-open [from, to); cumulative_pct is the
-- share of connected sessions that had audio within the band's upper bound.
-- param stream: the stream_id
WITH waits AS (
    SELECT CAST(connect_ts AS BIGINT) - CAST(join_ts AS BIGINT) AS ttfa_ms
    FROM sessions
    WHERE stream_id = $stream AND connect_ts IS NOT NULL
),
banded AS (
    SELECT CASE
             WHEN ttfa_ms < 1000    THEN 1
             WHEN ttfa_ms < 2000    THEN 2
             WHEN ttfa_ms < 5000    THEN 3
             WHEN ttfa_ms < 10000   THEN 4
             WHEN ttfa_ms < 30000   THEN 5
             WHEN ttfa_ms < 60000   THEN 6
             WHEN ttfa_ms < 300000  THEN 7
             ELSE 8
           END AS band
    FROM waits
),
counted AS (
    SELECT band, count(*) AS sessions FROM banded GROUP BY band
)
SELECT CASE band
         WHEN 1 THEN '0-1 s' WHEN 2 THEN '1-2 s' WHEN 3 THEN '2-5 s' WHEN 4 THEN '5-10 s'
         WHEN 5 THEN '10-30 s' WHEN 6 THEN '30-60 s' WHEN 7 THEN '1-5 min' ELSE '5 min or more'
       END AS wait,
       sessions,
       round(100.0 * sessions / sum(sessions) OVER (), 1) AS pct,
       round(100.0 * sum(sessions) OVER (ORDER BY band) / sum(sessions) OVER (), 1) AS cumulative_pct
FROM counted
ORDER BY band;
