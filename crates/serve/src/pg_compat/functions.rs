//! Functions Postgres clients call in their catalog queries that DataFusion lacks: the
//! `*_is_visible` and `pg_get_*def` family, `json_build_object` and `current_setting`.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// A function of any arguments that always answers the same: what a read-only database with one
/// schema answers to "is it visible" (true) and "what is its definition" (none).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Constant {
    name: &'static str,
    signature: Signature,
    value: ScalarValue,
}

impl ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.value.data_type())
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

fn constant(name: &'static str, value: ScalarValue) -> ScalarUDF {
    ScalarUDF::new_from_impl(Constant {
        name,
        signature: Signature::variadic_any(Volatility::Immutable),
        value,
    })
}

/// `json_build_object(key, value, …)`: a JSON object as text (SQLAlchemy reads identity options
/// with it; here there are none, so it only has to plan and answer sensibly).
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::arrow::array::{Array, StringBuilder};
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut out = StringBuilder::new();
        for row in 0..rows {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?.to_string();
                let value = match pair.get(1) {
                    Some(a) if !a.is_null(row) => {
                        serde_json::Value::String(ScalarValue::try_from_array(a, row)?.to_string())
                    }
                    _ => serde_json::Value::Null,
                };
                object.insert(key, value);
            }
            out.append_value(serde_json::Value::Object(object).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Registers the functions clients' catalog queries call that DataFusion lacks.
pub(super) fn register(ctx: &SessionContext) {
    for name in [
        "pg_type_is_visible",
        "pg_function_is_visible",
        "pg_collation_is_visible",
        "pg_opclass_is_visible",
        "pg_operator_is_visible",
        "pg_conversion_is_visible",
    ] {
        ctx.register_udf(constant(name, ScalarValue::Boolean(Some(true))));
    }
    for name in [
        "pg_get_serial_sequence",
        "pg_get_indexdef",
        "pg_get_triggerdef",
        "pg_get_viewdef",
        "pg_get_ruledef",
        "pg_get_function_identity_arguments",
        "pg_get_function_arguments",
        "pg_get_function_result",
        // Nothing here has a comment.
        "obj_description",
        "col_description",
        "shobj_description",
    ] {
        ctx.register_udf(constant(name, ScalarValue::Utf8(None)));
    }
    // Sizes of relations stored as Postgres stores them: none here (earshot's are Parquet files).
    for name in ["pg_table_size", "pg_total_relation_size", "pg_indexes_size"] {
        ctx.register_udf(constant(name, ScalarValue::Int64(None)));
    }
    ctx.register_udf(ScalarUDF::new_from_impl(JsonBuildObject {
        signature: Signature::variadic_any(Volatility::Immutable),
    }));
    register_settings(ctx);
    ctx.register_udf(ScalarUDF::new_from_impl(Unsupported {
        signature: Signature::exact(vec![], Volatility::Volatile),
    }));
    ctx.register_udf(ScalarUDF::new_from_impl(ExpandArray {
        signature: Signature::any(1, Volatility::Immutable),
    }));
    ctx.register_udf(ScalarUDF::new_from_impl(SizePretty {
        signature: Signature::any(1, Volatility::Immutable),
    }));
}

/// Stands for a subquery DataFusion cannot run (see `rewrite::UNSUPPORTED`): no value on no rows,
/// an error on any row.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Unsupported {
    signature: Signature,
}

impl ScalarUDFImpl for Unsupported {
    fn name(&self) -> &str {
        super::rewrite::UNSUPPORTED
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::new_list(DataType::Utf8, true))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.number_rows > 0 {
            return Err(datafusion::common::DataFusionError::NotImplemented(
                "a subquery over a derived table of the outer row, in a catalog query that \
                 has rows: earshot cannot run it"
                    .into(),
            ));
        }
        Ok(ColumnarValue::Array(
            datafusion::arrow::array::new_empty_array(&self.return_type(&[])?),
        ))
    }
}

/// `earshot_expandarray(a)`: the elements of `a` with their positions, `[{x, n}, …]`. Postgres's
/// `information_schema._pg_expandarray(a)` is a set-returning function, one row `(x, n)` per
/// element; `rewrite` turns a call of it into `unnest(earshot_expandarray(a))`, the same rows.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ExpandArray {
    signature: Signature,
}

fn expanded_type(list: &DataType) -> DataType {
    use datafusion::arrow::datatypes::{Field, Fields};
    let element = match list {
        DataType::List(f) | DataType::LargeList(f) => f.data_type().clone(),
        other => other.clone(),
    };
    DataType::Struct(Fields::from(vec![
        Field::new("x", element, true),
        Field::new("n", DataType::Int32, false),
    ]))
}

impl ScalarUDFImpl for ExpandArray {
    fn name(&self) -> &str {
        super::rewrite::EXPAND_ARRAY
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(DataType::new_list(expanded_type(&args[0]), true))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::arrow::array::{Array, Int32Array, ListArray, StructArray};
        use datafusion::arrow::datatypes::Field;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let list = datafusion::common::cast::as_list_array(&arrays[0])?;
        let offsets = list.offsets();
        let mut positions = Vec::with_capacity(list.values().len());
        for row in 0..list.len() {
            let (start, end) = (offsets[row], offsets[row + 1]);
            positions.extend(1..=(end - start));
        }
        let values = list.values().slice(
            offsets[0] as usize,
            (offsets[list.len()] - offsets[0]) as usize,
        );
        let DataType::Struct(fields) = expanded_type(list.data_type()) else {
            unreachable!()
        };
        let elements = StructArray::try_new(
            fields.clone(),
            vec![values, Arc::new(Int32Array::from(positions))],
            None,
        )?;
        let rebased = datafusion::arrow::buffer::OffsetBuffer::new(
            offsets
                .iter()
                .map(|o| o - offsets[0])
                .collect::<Vec<_>>()
                .into(),
        );
        let out = ListArray::try_new(
            Arc::new(Field::new("item", DataType::Struct(fields), true)),
            rebased,
            Arc::new(elements),
            list.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `pg_size_pretty(bytes)`: a size in bytes, kB, MB, GB, TB or PB, as Postgres rounds it (a unit
/// is used from 10,240 of the one below; halves round away from zero).
#[derive(Debug, PartialEq, Eq, Hash)]
struct SizePretty {
    signature: Signature,
}

/// The text `pg_size_pretty` gives for `bytes`.
pub(super) fn size_pretty(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if bytes.unsigned_abs() < 10 * 1024 {
        return format!("{bytes} bytes");
    }
    // Halved, rounded, and the last step taken with the half: as Postgres does.
    let mut size = bytes / 512;
    for (i, unit) in UNITS.iter().enumerate() {
        let half_rounded = (size + size.signum()) / 2;
        if half_rounded.unsigned_abs() < 10 * 1024 || i == UNITS.len() - 1 {
            return format!("{half_rounded} {unit}");
        }
        size /= 1024;
    }
    unreachable!()
}

impl ScalarUDFImpl for SizePretty {
    fn name(&self) -> &str {
        "pg_size_pretty"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::arrow::array::{Array, StringBuilder};
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let bytes = datafusion::arrow::compute::cast(&arrays[0], &DataType::Int64)?;
        let bytes = datafusion::common::cast::as_int64_array(&bytes)?;
        let mut out = StringBuilder::new();
        for row in 0..args.number_rows {
            if bytes.is_null(row) {
                out.append_null();
            } else {
                out.append_value(size_pretty(bytes.value(row)));
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_print_as_postgres_prints_them() {
        // Postgres 16: SELECT pg_size_pretty(x::bigint) for each x.
        for (bytes, text) in [
            (0, "0 bytes"),
            (10239, "10239 bytes"),
            (10240, "10 kB"),
            (10752, "11 kB"),
            (1_000_000, "977 kB"),
            (10_485_760, "10 MB"),
            (123_456_789_012, "115 GB"),
            (-10240, "-10 kB"),
        ] {
            assert_eq!(super::size_pretty(bytes), text, "{bytes}");
        }
    }
}

/// The settings `current_setting(name)` answers, as this endpoint runs: read-only, UTF-8, UTC, one
/// schema. Names are matched in any case, as Postgres does.
pub(super) const SETTINGS: &[(&str, &str)] = &[
    ("application_name", ""),
    ("block_size", "8192"),
    ("bytea_output", "hex"),
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO, YMD"),
    ("default_table_access_method", "heap"),
    ("default_transaction_isolation", "read committed"),
    ("default_transaction_read_only", "on"),
    ("extra_float_digits", "1"),
    ("integer_datetimes", "on"),
    ("intervalstyle", "postgres"),
    ("is_superuser", "off"),
    ("lc_collate", "C"),
    ("lc_ctype", "C"),
    ("lc_messages", "C"),
    ("max_identifier_length", "63"),
    ("max_index_keys", "32"),
    ("search_path", "public"),
    ("server_encoding", "UTF8"),
    ("server_version", "16.0"),
    ("server_version_num", "160000"),
    ("standard_conforming_strings", "on"),
    ("statement_timeout", "0"),
    ("timezone", "UTC"),
    ("transaction_isolation", "read committed"),
    ("transaction_read_only", "on"),
];

/// The words of the error for a setting `current_setting` does not know (SQLSTATE 42704).
pub(super) const UNKNOWN_SETTING: &str = "unrecognized configuration parameter";

/// `current_setting(name [, missing_ok])`: a setting's value as text; an unknown one is an error,
/// or NULL when `missing_ok` is true.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentSetting {
    signature: Signature,
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::arrow::array::{Array, StringBuilder};
        use datafusion::arrow::compute::cast;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let names = cast(&arrays[0], &DataType::Utf8)?;
        let names = datafusion::common::cast::as_string_array(&names)?;
        let missing_ok = match arrays.get(1) {
            Some(a) => Some(cast(a, &DataType::Boolean)?),
            None => None,
        };
        let missing_ok = match &missing_ok {
            Some(a) => Some(datafusion::common::cast::as_boolean_array(a)?),
            None => None,
        };
        let mut out = StringBuilder::new();
        for row in 0..args.number_rows {
            if names.is_null(row) {
                out.append_null();
                continue;
            }
            let name = names.value(row);
            match SETTINGS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                Some((_, value)) => out.append_value(value),
                None if missing_ok.is_some_and(|m| m.is_valid(row) && m.value(row)) => {
                    out.append_null()
                }
                None => {
                    return Err(datafusion::common::DataFusionError::Execution(format!(
                        "{UNKNOWN_SETTING} \"{name}\""
                    )));
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

fn register_settings(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(CurrentSetting {
        signature: Signature::one_of(
            vec![
                datafusion::logical_expr::TypeSignature::Any(1),
                datafusion::logical_expr::TypeSignature::Any(2),
            ],
            Volatility::Stable,
        ),
    }));
}
