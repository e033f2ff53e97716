-- The stream-level figures of contract §3, computed by DuckDB from the raw events.
-- The peer in bench/run: an analyst's alternative to earshot. Parameters are substituted by
-- bench/duckdb_peer.py: source (a SELECT of the raw rows: the NDJSON file, or Parquet of the same
-- events), liveness_ms, lateness_ms and min_listen_ms, each written in braces below.
WITH raw AS (
  SELECT row_number() OVER () AS rn, * FROM ({source})
),
valid AS (
  SELECT rn, event_id, type, stream_id, listener_id, session_id, displayed, state,
         epoch_ms(try_cast(ts AS TIMESTAMPTZ)) AS t,
         epoch_ms(try_cast(scheduled_start AS TIMESTAMPTZ)) AS sched
  FROM raw
  WHERE v = 1 AND event_id IS NOT NULL AND try_cast(ts AS TIMESTAMPTZ) IS NOT NULL AND stream_id IS NOT NULL
    AND type IN ('join','connect','heartbeat','leave','drop','display','stream_state')
),
firsts AS (  -- de-duplication: the first copy of an event_id to arrive counts
  SELECT * FROM valid QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY rn) = 1
),
ontime AS (  -- lateness: below the newest earlier ts minus the allowed lateness
  SELECT * FROM (
    SELECT *, max(t) OVER (ORDER BY rn ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS newest
    FROM firsts)
  WHERE newest IS NULL OR t >= newest - {lateness_ms}
),
sess AS (
  SELECT stream_id, session_id,
         min(t) AS join_ts,
         arg_min(listener_id, (t, rn)) AS listener,
         min(t) FILTER (WHERE type IN ('leave','drop')) AS end_ts
  FROM ontime WHERE type IN ('join','connect','heartbeat','leave','drop')
  GROUP BY ALL
),
alive AS (
  SELECT o.stream_id, o.session_id, s.listener, s.end_ts, o.t
  FROM ontime o JOIN sess s USING (stream_id, session_id)
  WHERE o.type IN ('connect','heartbeat') AND (s.end_ts IS NULL OR o.t < s.end_ts)
),
runs AS (  -- gaps and islands: a new connected run starts when an alive point is ≥ L after the last
  SELECT *, sum(CASE WHEN prev IS NULL OR t > prev + {liveness_ms} THEN 1 ELSE 0 END)
              OVER (PARTITION BY stream_id, session_id ORDER BY t ROWS UNBOUNDED PRECEDING) AS run
  FROM (SELECT *, lag(t) OVER (PARTITION BY stream_id, session_id ORDER BY t) AS prev FROM alive)
),
intervals AS (
  SELECT stream_id, session_id, listener, min(t) AS a,
         least(max(t) + {liveness_ms}, coalesce(any_value(end_ts), 9223372036854775807)) AS b
  FROM runs GROUP BY stream_id, session_id, listener, run
),
connect AS (
  SELECT stream_id, session_id, min(a) AS connect_ts FROM intervals GROUP BY ALL
),
roster_peak AS (
  SELECT stream_id, max(v) AS peak_roster FROM (
    SELECT stream_id, sum(d) OVER (PARTITION BY stream_id ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS v
    FROM (SELECT stream_id, join_ts AS t, 1 AS d FROM sess WHERE end_ts IS NULL OR end_ts > join_ts
          UNION ALL
          SELECT stream_id, end_ts, -1 FROM sess WHERE end_ts > join_ts))
  GROUP BY stream_id
),
connected_peak AS (
  SELECT stream_id, max(v) AS peak_connected FROM (
    SELECT stream_id, sum(d) OVER (PARTITION BY stream_id ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS v
    FROM (SELECT stream_id, a AS t, 1 AS d FROM intervals UNION ALL SELECT stream_id, b, -1 FROM intervals))
  GROUP BY stream_id
),
listen AS (  -- union of each listener's connected intervals across sessions
  SELECT stream_id, listener, sum(e - s) AS listened FROM (
    SELECT stream_id, listener, min(a) AS s, max(b) AS e FROM (
      SELECT *, sum(CASE WHEN a > maxb THEN 1 ELSE 0 END)
                  OVER (PARTITION BY stream_id, listener ORDER BY a, b ROWS UNBOUNDED PRECEDING) AS grp
      FROM (SELECT *, max(b) OVER (PARTITION BY stream_id, listener ORDER BY a, b
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS maxb
            FROM intervals))
    GROUP BY stream_id, listener, grp)
  GROUP BY ALL
),
per_stream AS (
  SELECT s.stream_id,
         count(*) AS sessions,
         count(DISTINCT s.listener) AS listeners_joined,
         count(DISTINCT s.listener) FILTER (WHERE c.connect_ts IS NOT NULL) AS listeners_connected,
         count(*) FILTER (WHERE c.connect_ts IS NULL) AS failed_joins,
         count(*) FILTER (WHERE c.connect_ts IS NULL AND s.end_ts IS NOT NULL) AS abandoned_before_audio,
         count(*) FILTER (WHERE c.connect_ts IS NULL AND s.end_ts IS NULL) AS ghost_sessions,
         quantile_disc(c.connect_ts - s.join_ts, 0.5) AS ttfa_ms_p50,
         quantile_disc(c.connect_ts - s.join_ts, 0.9) AS ttfa_ms_p90,
         min(c.connect_ts) AS first_connect
  FROM sess s LEFT JOIN connect c USING (stream_id, session_id)
  GROUP BY s.stream_id
),
host AS (
  SELECT stream_id,
         min(t) FILTER (WHERE type = 'stream_state' AND state = 'live') AS live_state,
         arg_max(sched, (t, sched)) FILTER (WHERE type = 'stream_state' AND sched IS NOT NULL) AS scheduled,
         max(displayed) FILTER (WHERE type = 'display') AS peak_displayed
  FROM ontime GROUP BY stream_id
)
SELECT p.stream_id, p.sessions, h.peak_displayed, r.peak_roster, cp.peak_connected,
       p.listeners_joined, p.listeners_connected,
       (SELECT count(*) FROM listen l WHERE l.stream_id = p.stream_id AND l.listened >= {min_listen_ms}) AS listeners_connected_60s,
       p.failed_joins, p.abandoned_before_audio, p.ghost_sessions, p.ttfa_ms_p50, p.ttfa_ms_p90,
       coalesce(h.live_state, p.first_connect) - h.scheduled AS start_delay_ms
FROM per_stream p JOIN host h USING (stream_id)
LEFT JOIN roster_peak r USING (stream_id) LEFT JOIN connected_peak cp USING (stream_id)
ORDER BY p.stream_id;
