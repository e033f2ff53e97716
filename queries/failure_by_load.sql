-- failure_by_load: how the failure rate moved with the load (contract §3b's minutes, as in
-- failures_by_minute): the rated minutes put in ten bands of equal width by the number trying to
-- listen at the minute's start (the roster), each band's attempts, failures and failure rate, and
-- over all rated minutes the rank correlation (Spearman's, ties at their mean rank) between that
-- load and the failure rate: near 1 when failures rose with the audience, as overload does; near 0
-- or below when they did not.
-- param stream: the stream_id
-- param bound_ms: B, how long an attempt may wait for audio and still count as served (10000)
-- param min_attempts: A, the fewest attempts for a minute to have a failure rate (20)
WITH stream AS (
    SELECT stream_id, CAST(live_at AS BIGINT) AS live_ms, CAST(last_event AS BIGINT) AS last_ms
    FROM streams
    WHERE stream_id = $stream
),
timed AS (
    SELECT greatest(CAST(s.join_ts AS BIGINT),
                    coalesce(st.live_ms, CAST(s.join_ts AS BIGINT))) AS attempt_ms,
           CAST(s.join_ts AS BIGINT) < st.live_ms AS before_live,
           CAST(s.connect_ts AS BIGINT) AS connect_ms,
           st.last_ms
    FROM sessions s JOIN stream st ON st.stream_id = s.stream_id
),
attempts AS (
    SELECT attempt_ms, attempt_ms / 60000 * 60000 AS minute_ms, before_live, connect_ms, last_ms
    FROM timed
),
decided AS (
    SELECT minute_ms,
           CASE WHEN connect_ms IS NOT NULL AND connect_ms - attempt_ms <= $bound_ms
                THEN 0 ELSE 1 END AS failed,
           CASE WHEN before_live THEN 1 ELSE 0 END AS before_live
    FROM attempts
    WHERE attempt_ms + $bound_ms <= last_ms
),
per_minute AS (
    SELECT minute_ms, count(*) AS attempts, sum(failed) AS failed,
           sum(before_live) AS pre_start_waits
    FROM decided
    GROUP BY minute_ms
),
rated AS (
    SELECT p.minute_ms,
           CAST(p.failed AS DOUBLE) / CAST(p.attempts AS DOUBLE) AS failure_rate,
           r.roster_start, r.connected_start, r.connected_peak
    FROM per_minute p
    LEFT JOIN rollups r
           ON r.stream_id = $stream AND r.width_ms = 60000
          AND CAST(r.bucket_start AS BIGINT) = p.minute_ms
    WHERE p.attempts >= $min_attempts
),
ranked AS (
    SELECT roster_start, failure_rate, attempts, failed,
           rank() OVER (ORDER BY roster_start)
             + (count(*) OVER (PARTITION BY roster_start) - 1) / 2.0 AS load_rank,
           rank() OVER (ORDER BY failure_rate)
             + (count(*) OVER (PARTITION BY failure_rate) - 1) / 2.0 AS rate_rank
    FROM (SELECT p.attempts, p.failed, r.roster_start,
                 CAST(p.failed AS DOUBLE) / CAST(p.attempts AS DOUBLE) AS failure_rate
          FROM per_minute p
          JOIN rollups r
            ON r.stream_id = $stream AND r.width_ms = 60000
           AND CAST(r.bucket_start AS BIGINT) = p.minute_ms
          WHERE p.attempts >= $min_attempts) rated
),
overall AS (
    SELECT corr(load_rank, rate_rank) AS rank_correlation,
           count(*) AS minutes_rated,
           greatest(max(roster_start), 1) AS top
    FROM ranked
),
banded AS (
    SELECT least(CAST(floor(10.0 * roster_start / o.top) AS BIGINT), 9) AS band,
           attempts, failed, o.top
    FROM ranked CROSS JOIN overall o
)
SELECT b.band * b.top / 10                                            AS load_from,
       (b.band + 1) * b.top / 10                                      AS load_to,
       count(*)                                                       AS minutes,
       sum(b.attempts)                                                AS attempts,
       sum(b.failed)                                                  AS failed,
       CAST(sum(b.failed) AS DOUBLE) / CAST(sum(b.attempts) AS DOUBLE) AS failure_rate,
       o.rank_correlation,
       o.minutes_rated
FROM banded b CROSS JOIN overall o
GROUP BY b.band, b.top, o.rank_correlation, o.minutes_rated
ORDER BY b.band;
