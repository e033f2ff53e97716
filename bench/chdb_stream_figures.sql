-- The stream-level figures of contract §3, computed by ClickHouse (chDB, in-process) from the raw
-- NDJSON: the same figures and the same rules as bench/duckdb_stream_figures.sql, in ClickHouse's
-- dialect. Parameters are substituted by bench/chdb_peer.py: path, liveness_ms, lateness_ms and
-- min_listen_ms, each written in braces below.
--
-- Lines are read as text and checked the way earshot's contract check does (a JSON object, no key
-- twice, `v` the integer 1, each field of its type), because ClickHouse's JSONEachRow reader
-- coerces `"v":"1"` to 1 and keeps one of two duplicate keys, which would count events earshot
-- and DuckDB reject. ClickHouse computes a CTE again at each use, so the on-time events, the
-- sessions and the connected intervals are made in-memory tables first (one statement each).
-- Lines are numbered in file order on one thread: with parallel reading, rowNumberInAllBlocks()
-- numbers blocks in the order they happen to finish, and then the first copy of an event_id (and
-- lateness) would depend on timing (one run in a few counted 172 fewer sessions).
CREATE TABLE lines ENGINE = Memory AS
  SELECT rowNumberInAllBlocks() AS rn, line FROM file('{path}', 'LineAsString')
  SETTINGS max_threads = 1, input_format_parallel_parsing = 0;
CREATE TABLE ontime ENGINE = Memory AS
WITH
raw AS (
  SELECT rn, line FROM lines
),
fields AS (  -- one parse per line: each key with its raw JSON value (none for a line that is not an object)
  SELECT rn, JSONExtractKeysAndValuesRaw(line) AS kv, arrayMap(x -> x.1, kv) AS keys,
         arrayFirst(x -> x.1 = 'v', kv).2 AS v_raw,
         arrayFirst(x -> x.1 = 'event_id', kv).2 AS event_id_raw,
         arrayFirst(x -> x.1 = 'type', kv).2 AS type_raw,
         arrayFirst(x -> x.1 = 'ts', kv).2 AS ts_raw,
         arrayFirst(x -> x.1 = 'stream_id', kv).2 AS stream_id_raw,
         arrayFirst(x -> x.1 = 'listener_id', kv).2 AS listener_id_raw,
         arrayFirst(x -> x.1 = 'session_id', kv).2 AS session_id_raw,
         arrayFirst(x -> x.1 = 'displayed', kv).2 AS displayed_raw,
         arrayFirst(x -> x.1 = 'state', kv).2 AS state_raw,
         arrayFirst(x -> x.1 = 'scheduled_start', kv).2 AS scheduled_raw
  FROM raw
),
valid AS (
  SELECT rn,
         JSONExtractString(event_id_raw) AS event_id,
         JSONExtractString(type_raw) AS type,
         JSONExtractString(stream_id_raw) AS stream_id,
         if(startsWith(listener_id_raw, '"'), JSONExtractString(listener_id_raw), NULL) AS listener_id,
         if(startsWith(session_id_raw, '"'), JSONExtractString(session_id_raw), NULL) AS session_id,
         if(displayed_raw IN ('', 'null'), NULL, toInt64(displayed_raw)) AS displayed,
         if(startsWith(state_raw, '"'), JSONExtractString(state_raw), NULL) AS state,
         toUnixTimestamp64Milli(parseDateTime64BestEffort(JSONExtractString(ts_raw), 3, 'UTC')) AS t,
         if(startsWith(scheduled_raw, '"'), toUnixTimestamp64Milli(parseDateTime64BestEffortOrNull(
           JSONExtractString(scheduled_raw), 3, 'UTC')), NULL) AS sched
  FROM fields
  WHERE length(keys) = length(arrayDistinct(keys))
    AND v_raw = '1'
    AND startsWith(event_id_raw, '"') AND startsWith(type_raw, '"')
    AND startsWith(stream_id_raw, '"') AND startsWith(ts_raw, '"')
    AND (listener_id_raw IN ('', 'null') OR startsWith(listener_id_raw, '"'))
    AND (session_id_raw IN ('', 'null') OR startsWith(session_id_raw, '"'))
    AND (state_raw IN ('', 'null') OR startsWith(state_raw, '"'))
    AND (scheduled_raw IN ('', 'null') OR startsWith(scheduled_raw, '"'))
    AND (displayed_raw IN ('', 'null') OR match(displayed_raw, '^-?[0-9]+$'))
    AND match(JSONExtractString(ts_raw),
              '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$')
    AND JSONExtractString(type_raw) IN ('join','connect','heartbeat','leave','drop','display','stream_state')
),
firsts AS (  -- de-duplication: the first copy of an event_id to arrive counts
  SELECT * FROM valid ORDER BY rn LIMIT 1 BY event_id
),
ontime_q AS (  -- lateness: below the newest earlier ts minus the allowed lateness
  SELECT * FROM (
    SELECT *, max(toNullable(t)) OVER (ORDER BY rn ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS newest
    FROM firsts)
  WHERE newest IS NULL OR t >= newest - {lateness_ms}
)
SELECT * FROM ontime_q;

CREATE TABLE sess ENGINE = Memory AS
SELECT stream_id, session_id,
         min(t) AS join_ts,
         argMin(listener_id, (t, rn)) AS listener,
         minIfOrNull(t, type IN ('leave', 'drop')) AS end_ts
  FROM ontime WHERE type IN ('join', 'connect', 'heartbeat', 'leave', 'drop')
  GROUP BY stream_id, session_id;

CREATE TABLE intervals ENGINE = Memory AS
WITH
alive AS (
  SELECT o.stream_id AS stream_id, o.session_id AS session_id, s.listener AS listener,
         s.end_ts AS end_ts, o.t AS t
  FROM ontime o JOIN sess s ON o.stream_id = s.stream_id AND o.session_id = s.session_id
  WHERE o.type IN ('connect', 'heartbeat') AND (s.end_ts IS NULL OR o.t < s.end_ts)
),
runs AS (  -- gaps and islands: a new connected run starts when an alive point is ≥ L after the last
  SELECT *, sum(if(prev IS NULL OR t > prev + {liveness_ms}, 1, 0))
              OVER (PARTITION BY stream_id, session_id ORDER BY t ROWS UNBOUNDED PRECEDING) AS run
  FROM (SELECT *, lagInFrame(toNullable(t)) OVER (PARTITION BY stream_id, session_id ORDER BY t
                                                  ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS prev
        FROM alive)
)
SELECT stream_id, session_id, listener, min(t) AS a,
         least(max(t) + {liveness_ms}, coalesce(any(end_ts), 9223372036854775807)) AS b
  FROM runs GROUP BY stream_id, session_id, listener, run;

WITH
connects AS (
  SELECT stream_id, session_id, min(a) AS connect_ts FROM intervals GROUP BY stream_id, session_id
),
roster_peak AS (
  SELECT stream_id, max(v) AS peak_roster FROM (
    SELECT stream_id, sum(d) OVER (PARTITION BY stream_id ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS v
    FROM (SELECT stream_id, join_ts AS t, 1 AS d FROM sess WHERE end_ts IS NULL OR end_ts > join_ts
          UNION ALL
          SELECT stream_id, assumeNotNull(end_ts) AS t, -1 AS d FROM sess WHERE end_ts > join_ts))
  GROUP BY stream_id
),
connected_peak AS (
  SELECT stream_id, max(v) AS peak_connected FROM (
    SELECT stream_id, sum(d) OVER (PARTITION BY stream_id ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS v
    FROM (SELECT stream_id, a AS t, 1 AS d FROM intervals
          UNION ALL SELECT stream_id, b AS t, -1 AS d FROM intervals))
  GROUP BY stream_id
),
listen AS (  -- union of each listener's connected intervals across sessions
  SELECT stream_id, listener, sum(e - s) AS listened FROM (
    SELECT stream_id, listener, grp, min(a) AS s, max(b) AS e FROM (
      SELECT *, sum(if(maxb IS NOT NULL AND a > maxb, 1, 0))
                  OVER (PARTITION BY stream_id, listener ORDER BY a, b ROWS UNBOUNDED PRECEDING) AS grp
      FROM (SELECT *, max(toNullable(b)) OVER (PARTITION BY stream_id, listener ORDER BY a, b
                                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS maxb
            FROM intervals))
    GROUP BY stream_id, listener, grp)
  GROUP BY stream_id, listener
),
qualified AS (
  SELECT stream_id, countIf(listened >= {min_listen_ms}) AS listeners_connected_60s
  FROM listen GROUP BY stream_id
),
per_stream AS (
  SELECT s.stream_id AS stream_id,
         count() AS sessions,
         uniqExact(s.listener) AS listeners_joined,
         uniqExactIf(s.listener, c.connect_ts IS NOT NULL) AS listeners_connected,
         countIf(c.connect_ts IS NULL) AS failed_joins,
         countIf(c.connect_ts IS NULL AND s.end_ts IS NOT NULL) AS abandoned_before_audio,
         countIf(c.connect_ts IS NULL AND s.end_ts IS NULL) AS ghost_sessions,
         -- nearest rank, as the contract defines the percentiles
         arraySort(groupArrayIf(c.connect_ts - s.join_ts, c.connect_ts IS NOT NULL)) AS ttfa,
         if(length(ttfa) = 0, NULL, ttfa[toUInt64(ceil(0.5 * length(ttfa)))]) AS ttfa_ms_p50,
         if(length(ttfa) = 0, NULL, ttfa[toUInt64(ceil(0.9 * length(ttfa)))]) AS ttfa_ms_p90,
         minOrNull(c.connect_ts) AS first_connect
  FROM sess s LEFT JOIN connects c ON s.stream_id = c.stream_id AND s.session_id = c.session_id
  GROUP BY s.stream_id
),
host AS (
  SELECT stream_id,
         minIfOrNull(t, type = 'stream_state' AND state = 'live') AS live_state,
         argMaxIf(sched, (t, sched), type = 'stream_state' AND sched IS NOT NULL) AS scheduled,
         maxIfOrNull(displayed, type = 'display') AS peak_displayed
  FROM ontime GROUP BY stream_id
)
SELECT p.stream_id AS stream_id, p.sessions AS sessions, h.peak_displayed AS peak_displayed,
       r.peak_roster AS peak_roster, cp.peak_connected AS peak_connected,
       p.listeners_joined AS listeners_joined, p.listeners_connected AS listeners_connected,
       coalesce(q.listeners_connected_60s, 0) AS listeners_connected_60s,
       p.failed_joins AS failed_joins, p.abandoned_before_audio AS abandoned_before_audio,
       p.ghost_sessions AS ghost_sessions, p.ttfa_ms_p50 AS ttfa_ms_p50, p.ttfa_ms_p90 AS ttfa_ms_p90,
       coalesce(h.live_state, p.first_connect) - h.scheduled AS start_delay_ms
FROM per_stream p JOIN host h ON p.stream_id = h.stream_id
LEFT JOIN roster_peak r ON p.stream_id = r.stream_id
LEFT JOIN connected_peak cp ON p.stream_id = cp.stream_id
LEFT JOIN qualified q ON p.stream_id = q.stream_id
ORDER BY stream_id
SETTINGS join_use_nulls = 1
