-- rejects_by_reason: the lines that were not valid events, by reason, across the whole ingest.
-- A rejected line names no stream it can be trusted for, so this is not filtered by stream.
SELECT reason_code,
       count(*) AS rejected
FROM rejects
GROUP BY reason_code
ORDER BY rejected DESC, reason_code;
