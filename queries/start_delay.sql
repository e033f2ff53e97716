-- start_delay: when the stream was announced to start, when audio really began, and the difference.
-- live_at is the first "live" stream_state, or else the first connect; the delay is negative if the
-- stream started early and empty if either time is unknown.
-- param stream: the stream_id
SELECT stream_id,
       scheduled_start,
       live_at,
       start_delay_ms,
       round(start_delay_ms / 60000.0, 1) AS start_delay_min,
       first_event,
       last_event
FROM streams
WHERE stream_id = $stream;
