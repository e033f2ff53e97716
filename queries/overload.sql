-- overload: the overload point and the capacity served (contract §3b), from the minutes of
-- failures_by_minute (same attempts, bound and minimum). Overload point: the earliest minute whose
-- failure rate exceeds $threshold and stays above it for the $persistence minutes with a rate that
-- begin there; its load is the roster at that minute's start (connected beside it). Capacity
-- served: the largest connected peak of a minute whose failure rate is at most $threshold. One row;
-- the overload columns are null when no such run exists. largest_roster and largest_connected are
-- the largest loads the event brought (a claim beyond them cannot be checked).
-- param stream: the stream_id
-- param bound_ms: B, how long an attempt may wait for audio and still count as served (10000)
-- param min_attempts: A, the fewest attempts for a minute to have a failure rate (20)
-- param threshold: X, the failure rate (a fraction: 0.1 for 10 %) above which a minute failed
-- param persistence: N, how many minutes with a rate, in a row, must fail (2)
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
numbered AS (
    SELECT minute_ms, failure_rate, roster_start, connected_start, connected_peak,
           CAST(row_number() OVER (ORDER BY minute_ms) AS BIGINT) AS n
    FROM rated
),
runs AS (
    SELECT a.minute_ms, a.failure_rate, a.roster_start, a.connected_start,
           count(*)                                                   AS run_length,
           sum(CASE WHEN b.failure_rate > $threshold THEN 1 ELSE 0 END) AS failing
    FROM numbered a
    JOIN numbered b ON b.n >= a.n AND b.n < a.n + $persistence
    GROUP BY a.minute_ms, a.failure_rate, a.roster_start, a.connected_start
),
overload AS (
    SELECT minute_ms, roster_start, connected_start, failure_rate
    FROM runs
    WHERE failing = $persistence AND run_length = $persistence
    ORDER BY minute_ms
    LIMIT 1
),
served AS (
    SELECT connected_peak, minute_ms
    FROM rated
    WHERE failure_rate <= $threshold AND connected_peak IS NOT NULL
    ORDER BY connected_peak DESC, minute_ms
    LIMIT 1
),
loads AS (
    SELECT max(roster_peak) AS largest_roster, max(connected_peak) AS largest_connected
    FROM rollups
    WHERE stream_id = $stream AND width_ms = 60000
)
SELECT arrow_cast(o.minute_ms, 'Timestamp(Millisecond, Some("UTC"))') AS overload_minute,
       o.roster_start                                                 AS overload_roster,
       o.connected_start                                              AS overload_connected,
       o.failure_rate                                                 AS overload_failure_rate,
       s.connected_peak                                               AS capacity_served,
       arrow_cast(s.minute_ms, 'Timestamp(Millisecond, Some("UTC"))') AS capacity_minute,
       l.largest_roster,
       l.largest_connected,
       (SELECT count(*) FROM rated)                                   AS minutes_rated
FROM loads l
LEFT JOIN overload o ON true
LEFT JOIN served s ON true;
