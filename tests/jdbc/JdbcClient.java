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

    /** The rows of a metadata call, each as column label -> value, or the call's error. */
    static List<Map<String, Object>> rows(String call, ResultSetSupplier f) {
        List<Map<String, Object>> out = new ArrayList<>();
        try (ResultSet rs = f.get()) {
            ResultSetMetaData m = rs.getMetaData();
            while (rs.next()) {
                Map<String, Object> row = new LinkedHashMap<>();
                for (int i = 1; i <= m.getColumnCount(); i++) {
                    row.put(m.getColumnLabel(i).toUpperCase(Locale.ROOT), rs.getObject(i));
                }
                out.add(row);
            }
            check("DatabaseMetaData." + call + " answers", true, "");
        } catch (SQLException e) {
            check("DatabaseMetaData." + call + " answers", false, e.getSQLState() + " " + e.getMessage());
        }
        return out;
    }

    interface ResultSetSupplier { ResultSet get() throws SQLException; }

    static void walk(DatabaseMetaData md, List<String> tables) {
        List<Map<String, Object>> catalogs = rows("getCatalogs()", md::getCatalogs);
        check("getCatalogs() lists earshot",
                catalogs.stream().anyMatch(r -> "earshot".equals(r.get("TABLE_CAT"))), catalogs);
        List<Map<String, Object>> schemas = rows("getSchemas()", md::getSchemas);
        check("getSchemas() lists public",
                schemas.stream().anyMatch(r -> "public".equals(r.get("TABLE_SCHEM"))), schemas);
        rows("getSchemas(earshot, %)", () -> md.getSchemas("earshot", "%"));
        rows("getTableTypes()", md::getTableTypes);
        rows("getTables(all types)", () -> md.getTables(null, null, "%", null));
        for (String t : tables) {
            List<Map<String, Object>> cols = rows("getColumns(" + t + ")", () -> md.getColumns(null, "public", t, "%"));
            check("getColumns(" + t + ") has columns", !cols.isEmpty(), t);
            check("getPrimaryKeys(" + t + ") is empty",
                    rows("getPrimaryKeys(" + t + ")", () -> md.getPrimaryKeys(null, "public", t)).isEmpty(), t);
            check("getImportedKeys(" + t + ") is empty",
                    rows("getImportedKeys(" + t + ")", () -> md.getImportedKeys(null, "public", t)).isEmpty(), t);
            check("getExportedKeys(" + t + ") is empty",
                    rows("getExportedKeys(" + t + ")", () -> md.getExportedKeys(null, "public", t)).isEmpty(), t);
            check("getIndexInfo(" + t + ") is empty",
                    rows("getIndexInfo(" + t + ")", () -> md.getIndexInfo(null, "public", t, false, true)).isEmpty(), t);
        }
        List<Map<String, Object>> types = rows("getTypeInfo()", md::getTypeInfo);
        Set<Object> names = new HashSet<>();
        for (Map<String, Object> r : types) names.add(r.get("TYPE_NAME"));
        check("getTypeInfo() has the tables' types",
                names.containsAll(List.of("int8", "text", "timestamptz", "bytea")), names);
        rows("getFunctions()", () -> md.getFunctions(null, "public", "%"));
        rows("getProcedures()", () -> md.getProcedures(null, "public", "%"));
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

            // The walk DBeaver and Metabase make of a new connection: catalogs, schemas, every
            // table's columns, keys and indexes (none: the tables are read-only), types, functions.
            walk(md, tables);

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
