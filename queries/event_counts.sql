-- event_counts: the valid events of one stream, by type, and how many of each arrived late.
-- Late events are kept in the events table but change no figure (contract section 4).
-- param stream: the stream_id
SELECT type,
       count(*)                                  AS events,
       sum(CASE WHEN late THEN 1 ELSE 0 END)     AS late
FROM events
WHERE stream_id = $stream
GROUP BY type
ORDER BY type;
