// pgjdbc, the JDBC driver behind DBeaver, Metabase and Tableau, against `earshot serve --pg`:
// connecting, DatabaseMetaData.getTables / getColumns (what their schema browsers call),
// prepared statements with parameters, types, and read-only. Figures are compared with
// `earshot sql` on the same data directory. Prints one line per check, PASS or FAIL, and exits
// non-zero if any failed. Run as a single-file program (Java 11+), with Debian's driver:
//
//   java -cp /usr/share/java/postgresql.jar JdbcClient.java --port P --earshot BIN --data DIR --stream ID
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.sql.*;
import java.util.*;

public class JdbcClient {
    static boolean failed = false;

    static void check(String name, boolean ok, Object detail) {
        failed |= !ok;
        System.out.println((ok ? "PASS " : "FAIL ") + name + (ok ? "" : ": " + detail));
    }

    /** The rows of `earshot sql --format csv` (header first); the values hold no commas. */
    static List<String[]> cli(String earshot, String data, String sql) throws Exception {
        Process p = new ProcessBuilder(earshot, "sql", "--format", "csv", "--data", data, sql).start();
        List<String[]> rows = new ArrayList<>();
        try (BufferedReader r = new BufferedReader(new InputStreamReader(p.getInputStream()))) {
            for (String line; (line = r.readLine()) != null; ) rows.add(line.split(",", -1));
        }
        if (p.waitFor() != 0) throw new RuntimeException("earshot sql failed: " + sql);
        return rows;
    }

    public static void main(String[] argv) throws Exception {
        Map<String, String> a = new HashMap<>();
        for (int i = 0; i + 1 < argv.length; i += 2) a.put(argv[i].replaceFirst("^--", ""), argv[i + 1]);
        String url = "jdbc:postgresql://127.0.0.1:" + a.get("port") + "/earshot";
        String stream = a.get("stream");
        try (Connection c = DriverManager.getConnection(url, "earshot", "")) {
            DatabaseMetaData md = c.getMetaData();
            check("the server says it is PostgreSQL", md.getDatabaseProductName().equals("PostgreSQL"),
                    md.getDatabaseProductName() + " " + md.getDatabaseProductVersion());

            List<String> tables = new ArrayList<>();
            try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) tables.add(rs.getString("TABLE_NAME"));
            }
            Collections.sort(tables);
            check("DatabaseMetaData.getTables",
                    tables.equals(List.of("buckets", "events", "rejects", "rollups", "sessions", "streams")), tables);

            Map<String, Integer> columns = new LinkedHashMap<>();
            try (ResultSet rs = md.getColumns(null, "public", "streams", "%")) {
                while (rs.next()) columns.put(rs.getString("COLUMN_NAME"), rs.getInt("DATA_TYPE"));
            }
            check("DatabaseMetaData.getColumns names the columns",
                    columns.containsKey("listeners_connected_60s") && columns.containsKey("peak_connected"),
                    columns.keySet());
            check("DatabaseMetaData.getColumns gives JDBC types",
                    Objects.equals(columns.get("peak_connected"), Types.BIGINT)
                            && Objects.equals(columns.get("stream_id"), Types.VARCHAR),
                    columns);

            String sql = "SELECT sessions, peak_connected, listeners_connected FROM streams WHERE stream_id = ?";
            List<String[]> want = cli(a.get("earshot"), a.get("data"), sql.replace("?", "'" + stream + "'"));
            try (PreparedStatement ps = c.prepareStatement(sql)) {
                for (int run = 1; run <= 2; run++) {
                    ps.setString(1, stream);
                    try (ResultSet rs = ps.executeQuery()) {
                        boolean one = rs.next();
                        String got = one ? rs.getLong(1) + "," + rs.getLong(2) + "," + rs.getLong(3) : "no row";
                        String expected = String.join(",", want.get(1));
                        check("a prepared statement gives earshot's figures (run " + run + ")",
                                got.equals(expected), got + " vs " + expected);
                    }
                }
            }

            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT bucket_start, connected_peak FROM buckets WHERE stream_id = ? ORDER BY bucket_start")) {
                ps.setString(1, stream);
                int n = 0;
                Timestamp first = null;
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        if (first == null) first = rs.getTimestamp(1);
                        n++;
                    }
                }
                check("timestamps arrive as java.sql.Timestamp", n > 10 && first != null, n + " " + first);
            }

            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE streams");
                check("writes are refused", false, "DROP TABLE succeeded");
            } catch (SQLException e) {
                check("writes are refused", "25006".equals(e.getSQLState()), e.getSQLState() + " " + e.getMessage());
            }
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT count(*) FROM sessions")) {
                check("the connection keeps working after an error", rs.next() && rs.getLong(1) > 0, "");
            }
        }
        System.exit(failed ? 1 : 0);
    }
}
