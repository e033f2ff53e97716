"""Runs Polars on the events, as an analyst would without earshot: the stream-level figures of
bench/duckdb_stream_figures.sql (the same rules), computed with Polars expressions from the NDJSON.

  polars_peer.py analyse FILE.ndjson

Prints the figures as JSON, in the shape of bench/duckdb_peer.py's.

Polars' NDJSON reader stops at the first malformed line, and `json_decode` has no per-row error
mode, so lines are read as text and checked the way earshot's contract check does before they are
decoded: a flat JSON object (`json_path_match` gives null for a line that is not JSON), no key twice,
`v` the integer 1, each field of its type (regular expressions on the text), an RFC 3339 `ts`.
"""
import json
import os
import sys

import polars as pl

mode, path = sys.argv[1], sys.argv[2]
if mode != "analyse":
    sys.exit(f"unknown mode {mode!r}: analyse")
L = int(os.environ.get("LIVENESS_MS", "30000"))
LATENESS, MIN_LISTEN = 60000, 60000
TYPES = ["join", "connect", "heartbeat", "leave", "drop", "display", "stream_state"]
SESSION_TYPES = ["join", "connect", "heartbeat", "leave", "drop"]
RFC3339 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
MAX = 9223372036854775807

line = pl.col("line")


def string_field(name, required):
    """The field is a JSON string (or, if not required, absent or null)."""
    is_string = line.str.contains(rf'[{{,]\s*"{name}"\s*:\s*"')
    if required:
        return is_string
    return is_string | ~line.str.contains(rf'[{{,]\s*"{name}"\s*:') | line.str.contains(
        rf'[{{,]\s*"{name}"\s*:\s*null\s*[,}}]')


def millis(col):
    text = pl.when(col.str.ends_with("Z")).then(col.str.slice(0, col.str.len_chars() - 1) + "+00:00").otherwise(col)
    return text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z", strict=False, time_unit="ms").dt.epoch("ms")


raw = pl.read_csv(path, has_header=False, separator="\x01", quote_char=None, new_columns=["line"],
                  schema_overrides=[pl.String]).with_row_index("rn")
keys = line.str.extract_all(r'[{,]\s*"((?:[^"\\]|\\.)*)"\s*:')
checked = raw.filter(
    line.str.starts_with("{")
    & line.str.json_path_match("$.event_id").is_not_null()
    & (keys.list.len() == keys.list.n_unique())
    & line.str.contains(r'[{,]\s*"v"\s*:\s*1\s*[,}]')
    & string_field("event_id", True) & string_field("type", True)
    & string_field("ts", True) & string_field("stream_id", True)
    & string_field("listener_id", False) & string_field("session_id", False)
    & string_field("state", False) & string_field("scheduled_start", False)
    & (line.str.contains(r'[{,]\s*"displayed"\s*:\s*-?\d+\s*[,}]')
       | ~line.str.contains(r'[{,]\s*"displayed"\s*:')
       | line.str.contains(r'[{,]\s*"displayed"\s*:\s*null\s*[,}]'))
)
fields = pl.Struct({"event_id": pl.String, "type": pl.String, "ts": pl.String, "stream_id": pl.String,
                    "listener_id": pl.String, "session_id": pl.String, "displayed": pl.Int64,
                    "state": pl.String, "scheduled_start": pl.String})
valid = (
    checked.with_columns(line.str.json_decode(fields).alias("e")).unnest("e")
    .filter(pl.col("ts").str.contains(RFC3339) & pl.col("type").is_in(TYPES))
    .with_columns(t=millis(pl.col("ts")), sched=millis(pl.col("scheduled_start")))
    .filter(pl.col("t").is_not_null())
    .drop("line", "ts", "scheduled_start")
)
# De-duplication (the first copy to arrive), then lateness (below the newest earlier ts − lateness).
firsts = valid.unique(subset="event_id", keep="first", maintain_order=True)
newest = pl.col("t").cum_max().shift(1)
ontime = firsts.filter(newest.is_null() | (pl.col("t") >= newest - LATENESS))

by_session = ["stream_id", "session_id"]
sess = (
    ontime.filter(pl.col("type").is_in(SESSION_TYPES))
    .group_by(by_session)
    .agg(join_ts=pl.col("t").min(),
         listener=pl.col("listener_id").sort_by(["t", "rn"]).first(),
         end_ts=pl.col("t").filter(pl.col("type").is_in(["leave", "drop"])).min())
)
alive = (
    ontime.filter(pl.col("type").is_in(["connect", "heartbeat"]))
    .join(sess, on=by_session)
    .filter(pl.col("end_ts").is_null() | (pl.col("t") < pl.col("end_ts")))
    .sort(by_session + ["t"])
)
# Gaps and islands: a new connected run starts at a session's first alive point, or ≥ L after the last.
same = (pl.col("stream_id") == pl.col("stream_id").shift(1)) & (pl.col("session_id") == pl.col("session_id").shift(1))
new_run = ~same.fill_null(False) | (pl.col("t") > pl.col("t").shift(1) + L)
intervals = (
    alive.with_columns(run=new_run.cast(pl.Int64).cum_sum())
    .group_by("run")
    .agg(pl.col("stream_id").first(), pl.col("session_id").first(), pl.col("listener").first(),
         a=pl.col("t").min(),
         b=pl.min_horizontal(pl.col("t").max() + L, pl.col("end_ts").first().fill_null(MAX)))
)
connects = intervals.group_by(by_session).agg(connect_ts=pl.col("a").min())


def peak(changes, name):
    return (changes.sort(["stream_id", "t", "d"])
            .with_columns(v=pl.col("d").cum_sum().over("stream_id"))
            .group_by("stream_id").agg(pl.col("v").max().alias(name)))


on_roster = sess.filter(pl.col("end_ts").is_null() | (pl.col("end_ts") > pl.col("join_ts")))
roster_peak = peak(pl.concat([
    on_roster.select("stream_id", t=pl.col("join_ts"), d=pl.lit(1)),
    on_roster.filter(pl.col("end_ts").is_not_null()).select("stream_id", t=pl.col("end_ts"), d=pl.lit(-1)),
]), "peak_roster")
connected_peak = peak(pl.concat([
    intervals.select("stream_id", t=pl.col("a"), d=pl.lit(1)),
    intervals.select("stream_id", t=pl.col("b"), d=pl.lit(-1)),
]), "peak_connected")
# The union of each listener's connected intervals across sessions.
by_listener = ["stream_id", "listener"]
listen = (
    intervals.sort(by_listener + ["a", "b"])
    .with_columns(maxb=pl.col("b").cum_max().shift(1).over(by_listener))
    .with_columns(grp=(pl.col("a") > pl.col("maxb")).fill_null(False).cast(pl.Int64).cum_sum().over(by_listener))
    .group_by(by_listener + ["grp"]).agg(s=pl.col("a").min(), e=pl.col("b").max())
    .group_by(by_listener).agg(listened=(pl.col("e") - pl.col("s")).sum())
)
qualified = listen.group_by("stream_id").agg(
    listeners_connected_60s=(pl.col("listened") >= MIN_LISTEN).sum())


def nearest_rank(values, q):
    n = values.len()
    return pl.when(n > 0).then(values.sort().get((n * q).ceil().cast(pl.Int64) - 1, null_on_oob=True))


joined = sess.join(connects, on=by_session, how="left")
no_audio = pl.col("connect_ts").is_null()
ttfa = (pl.col("connect_ts") - pl.col("join_ts")).drop_nulls()
per_stream = joined.group_by("stream_id").agg(
    sessions=pl.len(),
    listeners_joined=pl.col("listener").n_unique(),
    listeners_connected=pl.col("listener").filter(~no_audio).n_unique(),
    failed_joins=no_audio.sum(),
    abandoned_before_audio=(no_audio & pl.col("end_ts").is_not_null()).sum(),
    ghost_sessions=(no_audio & pl.col("end_ts").is_null()).sum(),
    ttfa_ms_p50=nearest_rank(ttfa, 0.5),
    ttfa_ms_p90=nearest_rank(ttfa, 0.9),
    first_connect=pl.col("connect_ts").min(),
)
state = ontime.filter(pl.col("type") == "stream_state")
host = ontime.group_by("stream_id").agg(
    live_state=pl.col("t").filter((pl.col("type") == "stream_state") & (pl.col("state") == "live")).min(),
    peak_displayed=pl.col("displayed").filter(pl.col("type") == "display").max(),
).join(
    state.filter(pl.col("sched").is_not_null()).sort(["t", "sched"])
    .group_by("stream_id").agg(scheduled=pl.col("sched").last()),
    on="stream_id", how="left")
out = (
    per_stream.join(host, on="stream_id")
    .join(roster_peak, on="stream_id", how="left")
    .join(connected_peak, on="stream_id", how="left")
    .join(qualified, on="stream_id", how="left")
    .with_columns(pl.col("listeners_connected_60s").fill_null(0),
                  start_delay_ms=pl.coalesce("live_state", "first_connect") - pl.col("scheduled"))
    .select("stream_id", "sessions", "peak_displayed", "peak_roster", "peak_connected",
            "listeners_joined", "listeners_connected", "listeners_connected_60s", "failed_joins",
            "abandoned_before_audio", "ghost_sessions", "ttfa_ms_p50", "ttfa_ms_p90", "start_delay_ms")
    .sort("stream_id")
)
print(json.dumps(out.to_dicts()))
