// node-postgres (`pg`) against `earshot serve --pg`, as Node.js dashboards and services connect:
// the simple protocol, parameterised and named prepared statements (the extended protocol), types
// as JavaScript values, the table list, and read-only. Figures are compared with `earshot sql` on the
// same data directory. Prints one line per check, PASS or FAIL; exits non-zero if any failed.
//
//   node client.mjs --port P --earshot BIN --data DIR --stream ID
import { execFileSync } from "node:child_process";
import pg from "pg";

const arg = (name) => {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) throw new Error(`missing --${name}`);
  return process.argv[i + 1];
};
const [port, earshot, data, stream] = ["port", "earshot", "data", "stream"].map(arg);
let failed = false;
const check = (name, ok, detail = "") => {
  failed ||= !ok;
  console.log(`${ok ? "PASS" : "FAIL"} ${name}${ok ? "" : `: ${JSON.stringify(detail)}`}`);
};
const cli = (sql) =>
  JSON.parse(execFileSync(earshot, ["sql", "--format", "json", "--data", data, sql]).toString());

const client = new pg.Client({ host: "127.0.0.1", port: Number(port), user: "earshot", database: "earshot" });
await client.connect();
try {
  const version = (await client.query("SELECT version() AS v")).rows[0].v;
  check("version() starts like PostgreSQL's", version.startsWith("PostgreSQL "), version);

  const sql = "SELECT stream_id, sessions, peak_connected, listeners_connected FROM streams WHERE stream_id = $1";
  const got = (await client.query(sql, [stream])).rows;
  const want = cli(sql.replace("$1", `'${stream}'`));
  // BIGINT arrives as a string in node-postgres (it may not fit a JavaScript number).
  const asNumbers = got.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, k === "stream_id" ? v : Number(v)])));
  check("a parameterised query gives earshot's figures", JSON.stringify(asNumbers) === JSON.stringify(want), { got, want });

  const named = { name: "peak-of-stream", text: "SELECT peak_connected FROM streams WHERE stream_id = $1", values: [stream] };
  const first = (await client.query(named)).rows[0].peak_connected;
  const again = (await client.query(named)).rows[0].peak_connected;
  check("a named prepared statement runs twice", first === again && Number(first) === want[0].peak_connected, { first, again });

  const buckets = (await client.query(
    "SELECT bucket_start, connected_peak FROM buckets WHERE stream_id = $1 ORDER BY bucket_start", [stream])).rows;
  check("timestamps arrive as Dates", buckets.length > 10 && buckets[0].bucket_start instanceof Date, buckets[0]);

  const tables = (await client.query(
    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name")).rows.map((r) => r.table_name);
  check("the table list", JSON.stringify(tables) === JSON.stringify(["buckets", "events", "rejects", "rollups", "sessions", "streams"]), tables);

  try {
    await client.query("DROP TABLE streams");
    check("writes are refused", false, "DROP TABLE succeeded");
  } catch (e) {
    check("writes are refused", String(e.message).includes("read-only") && e.code === "25006", { message: e.message, code: e.code });
  }
  try {
    await client.query("SELECT nope FROM streams");
    check("a bad query is an error with a SQLSTATE", false, "it succeeded");
  } catch (e) {
    check("a bad query is an error with a SQLSTATE", typeof e.code === "string" && e.code.length === 5, { message: e.message, code: e.code });
  }
  const after = (await client.query("SELECT count(*) AS n FROM sessions")).rows[0].n;
  check("the connection keeps working after errors", Number(after) > 0, after);
} finally {
  await client.end();
}
process.exit(failed ? 1 : 0);
