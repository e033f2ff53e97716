-- breakdown: sessions, listeners and failures by client and region.
-- A session's client and region are those of its earliest event. ttfa_ms_median is the exact median
-- time to first audio of the group's connected sessions.
-- param stream: the stream_id
SELECT coalesce(client, '(unknown)')                                   AS client,
       coalesce(region, '(unknown)')                                   AS region,
       count(*)                                                        AS sessions,
       count(DISTINCT listener_key)                                    AS listeners,
       count(connect_ts)                                               AS connected_sessions,
       count(*) - count(connect_ts)                                    AS failed_joins,
       round(100.0 * (count(*) - count(connect_ts)) / count(*), 1)    AS pct_failed,
       median(CAST(connect_ts AS BIGINT) - CAST(join_ts AS BIGINT))    AS ttfa_ms_median
FROM sessions
WHERE stream_id = $stream
GROUP BY 1, 2
ORDER BY sessions DESC, client, region;
