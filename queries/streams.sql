-- streams: every stream with its headline figures, newest first.
-- What a dashboard's stream picker or an analyst's first look needs: when it really started, how many
-- were displayed, on the roster and really connected at the peaks, and how many distinct listeners
-- joined and heard audio.
SELECT stream_id,
       scheduled_start,
       live_at,
       start_delay_ms,
       peak_displayed,
       peak_roster,
       peak_connected,
       listeners_joined,
       listeners_connected,
       listeners_connected_60s,
       failed_joins
FROM streams
ORDER BY first_event DESC, stream_id;
