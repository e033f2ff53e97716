//! Query results for people and programs: an aligned table, CSV, a JSON array or NDJSON.
//!
//! Timestamps are RFC 3339 strings in UTC; sketches are hex in CSV/JSON (lossless) and shown as
//! `<sketch N bytes>` in the table, where 16 KiB of hex would help no one.

use std::io::Write;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type, Schema, TimeUnit, TimestampMillisecondType};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use earshot_contract::format_rfc3339_ms;
use serde_json::{Number, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Ndjson,
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A cell as JSON: numbers and booleans typed, timestamps as RFC 3339, bytes as hex.
fn json_cell(col: &dyn Array, row: usize, fmt: &ArrayFormatter<'_>) -> Value {
    if col.is_null(row) {
        return Value::Null;
    }
    match col.data_type() {
        DataType::Boolean => Value::Bool(col.as_boolean().value(row)),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            match arrow::compute::cast(&col.slice(row, 1), &DataType::Int64) {
                Ok(a) => Value::Number(a.as_primitive::<Int64Type>().value(0).into()),
                Err(_) => Value::String(fmt.value(row).to_string()),
            }
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => fmt
            .value(row)
            .to_string()
            .parse::<u64>()
            .map(|v| Value::Number(v.into()))
            .unwrap_or(Value::Null),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => fmt
            .value(row)
            .to_string()
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        _ => Value::String(text_cell(col, row, fmt, false)),
    }
}

/// A cell as text; `short` abbreviates binary values.
fn text_cell(col: &dyn Array, row: usize, fmt: &ArrayFormatter<'_>, short: bool) -> String {
    if col.is_null(row) {
        return String::new();
    }
    match col.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            format_rfc3339_ms(col.as_primitive::<TimestampMillisecondType>().value(row))
        }
        DataType::Timestamp(_, _) => match arrow::compute::cast(
            &col.slice(row, 1),
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        ) {
            Ok(a) => format_rfc3339_ms(a.as_primitive::<TimestampMillisecondType>().value(0)),
            Err(_) => fmt.value(row).to_string(),
        },
        DataType::Binary => {
            let v = col.as_binary::<i32>().value(row);
            if short {
                format!("<sketch {} bytes>", v.len())
            } else {
                hex(v)
            }
        }
        _ => fmt.value(row).to_string(),
    }
}

fn formatters<'a>(
    batch: &'a RecordBatch,
    opts: &'a FormatOptions<'a>,
) -> anyhow::Result<Vec<ArrayFormatter<'a>>> {
    batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), opts).map_err(Into::into))
        .collect()
}

fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

/// A text cell's value without a copy (none for null or other types).
fn borrowed_text(col: &dyn Array, row: usize) -> Option<&str> {
    if col.is_null(row) {
        return None;
    }
    match col.data_type() {
        DataType::Utf8 => Some(col.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Some(col.as_string::<i64>().value(row)),
        DataType::Utf8View => Some(col.as_string_view().value(row)),
        _ => None,
    }
}

/// Writes batches in `format`.
/// The column names come from `schema`, so an empty result still has its header.
pub fn write(
    out: &mut dyn Write,
    schema: &Schema,
    batches: &[RecordBatch],
    format: Format,
) -> anyhow::Result<()> {
    let opts = FormatOptions::default().with_null("");
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    match format {
        Format::Json | Format::Ndjson => {
            // Objects are written by hand so keys keep the query's column order, and row by row
            // into `out`, so a big result is never held twice.
            let keys: Vec<String> = names
                .iter()
                .map(serde_json::to_string)
                .collect::<Result<_, _>>()?;
            let json = format == Format::Json;
            if json {
                out.write_all(b"[\n")?;
            }
            let mut first = true;
            for batch in batches {
                let fmts = formatters(batch, &opts)?;
                for r in 0..batch.num_rows() {
                    if json {
                        out.write_all(if first { b"  {" } else { b",\n  {" })?;
                    } else {
                        out.write_all(b"{")?;
                    }
                    first = false;
                    for (i, col) in batch.columns().iter().enumerate() {
                        if i > 0 {
                            out.write_all(b",")?;
                        }
                        out.write_all(keys[i].as_bytes())?;
                        out.write_all(b":")?;
                        match borrowed_text(col.as_ref(), r) {
                            Some(text) => serde_json::to_writer(&mut *out, text)?,
                            None => serde_json::to_writer(
                                &mut *out,
                                &json_cell(col.as_ref(), r, &fmts[i]),
                            )?,
                        }
                    }
                    out.write_all(if json { b"}" } else { b"}\n" })?;
                }
            }
            if json {
                out.write_all(if first { b"]\n" } else { b"\n]\n" })?;
            }
        }
        Format::Csv => {
            writeln!(
                out,
                "{}",
                names
                    .iter()
                    .map(|n| csv_field(n))
                    .collect::<Vec<_>>()
                    .join(",")
            )?;
            for batch in batches {
                let fmts = formatters(batch, &opts)?;
                for r in 0..batch.num_rows() {
                    for (i, c) in batch.columns().iter().enumerate() {
                        if i > 0 {
                            out.write_all(b",")?;
                        }
                        match borrowed_text(c.as_ref(), r) {
                            Some(text) => out.write_all(csv_field(text).as_bytes())?,
                            None => out.write_all(
                                csv_field(&text_cell(c.as_ref(), r, &fmts[i], false)).as_bytes(),
                            )?,
                        }
                    }
                    out.write_all(b"\n")?;
                }
            }
        }
        Format::Table => {
            let mut rows: Vec<Vec<String>> = Vec::new();
            let numeric: Vec<bool> = schema
                .fields()
                .iter()
                .map(|f| f.data_type().is_numeric())
                .collect();
            for batch in batches {
                let fmts = formatters(batch, &opts)?;
                for r in 0..batch.num_rows() {
                    rows.push(
                        batch
                            .columns()
                            .iter()
                            .enumerate()
                            .map(|(i, c)| text_cell(c.as_ref(), r, &fmts[i], true))
                            .collect(),
                    );
                }
            }
            let mut widths: Vec<usize> = names.iter().map(|n| n.chars().count()).collect();
            for row in &rows {
                for (i, c) in row.iter().enumerate() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
            let line = |cells: &[String], numeric: &[bool]| -> String {
                cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        if numeric[i] {
                            format!(" {c:>w$} ", w = widths[i])
                        } else {
                            format!(" {c:<w$} ", w = widths[i])
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("|")
            };
            writeln!(
                out,
                "{}",
                line(&names, &vec![false; names.len()]).trim_end()
            )?;
            writeln!(
                out,
                "{}",
                widths
                    .iter()
                    .map(|w| "-".repeat(w + 2))
                    .collect::<Vec<_>>()
                    .join("+")
            )?;
            for row in &rows {
                writeln!(out, "{}", line(row, &numeric).trim_end())?;
            }
            let n = rows.len();
            writeln!(out, "({n} row{})", if n == 1 { "" } else { "s" })?;
        }
    }
    Ok(())
}
