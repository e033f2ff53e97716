-- drop_reasons: how sessions ended — by the listener (leave) or by a failure (drop) — and why.
-- Sessions still open at the end of the data appear with end_type "open".
-- param stream: the stream_id
SELECT coalesce(end_type, 'open')                                AS end_type,
       coalesce(end_reason, '')                                  AS end_reason,
       count(*)                                                  AS sessions,
       count(connect_ts)                                         AS had_audio,
       round(100.0 * count(*) / sum(count(*)) OVER (), 1)       AS pct_of_sessions
FROM sessions
WHERE stream_id = $stream
GROUP BY 1, 2
ORDER BY sessions DESC, end_type, end_reason;
