-- failures_by_minute: join attempts against the load, minute by minute (contract §3b).
-- A session's attempt starts at the later of its join and the stream going live; it is served if
-- audio came within $bound_ms of that, failed otherwise, and undecided (left out) while the stream's
-- last event is less than $bound_ms after it. failure_rate is failed / attempts in minutes with at
-- least $min_attempts attempts. roster and connected are the counts at the minute's start and their
-- peaks within it, from the one-minute rollups (which start a stream's first minute at its first
-- bucket; null if the bucket width does not divide a minute).
-- ttfa_ms_p50/p90 are the waits for audio from the attempt time of the minute's connected sessions
-- (nearest rank); pre_start_waits counts the attempts whose join came before the stream went live.
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
waits AS (
    SELECT minute_ms,
           connect_ms - attempt_ms AS wait_ms,
           row_number() OVER (PARTITION BY minute_ms ORDER BY connect_ms - attempt_ms) AS rank,
           count(*) OVER (PARTITION BY minute_ms) AS n
    FROM attempts
    WHERE connect_ms IS NOT NULL
),
ttfa AS (
    SELECT minute_ms,
           min(CASE WHEN rank * 100 >= n * 50 THEN wait_ms END) AS ttfa_ms_p50,
           min(CASE WHEN rank * 100 >= n * 90 THEN wait_ms END) AS ttfa_ms_p90
    FROM waits
    GROUP BY minute_ms
)
SELECT arrow_cast(p.minute_ms, 'Timestamp(Millisecond, Some("UTC"))')      AS minute,
       p.attempts,
       p.attempts - p.failed                                               AS served,
       p.failed,
       CASE WHEN p.attempts >= $min_attempts
            THEN CAST(p.failed AS DOUBLE) / CAST(p.attempts AS DOUBLE) END AS failure_rate,
       r.roster_start,
       r.roster_peak,
       r.connected_start,
       r.connected_peak,
       t.ttfa_ms_p50,
       t.ttfa_ms_p90,
       p.pre_start_waits
FROM per_minute p
LEFT JOIN rollups r
       ON r.stream_id = $stream AND r.width_ms = 60000
      AND CAST(r.bucket_start AS BIGINT) = p.minute_ms
LEFT JOIN ttfa t ON t.minute_ms = p.minute_ms
ORDER BY p.minute_ms;
