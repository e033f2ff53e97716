//! `hll_merge(sketch)` and `hll_count(sketch)` over earshot's sketch bytes.
//!
//! Both work on the stored bytes (`earshot_sketch::Union`, `estimate_bytes`): a merge is an
//! element-wise max over dense registers, with every byte-format check kept, and no sketch
//! structure is built unless the estimate needs the library's bias table. Bad bytes are a query
//! error naming the function and what is wrong, never a panic.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, ColumnarValue, ScalarUDF, Volatility, create_udaf, create_udf,
};
use earshot_sketch::{SketchError, Union, estimate_bytes, round_estimate};

fn bad_sketch(function: &str) -> impl Fn(SketchError) -> DataFusionError + '_ {
    move |e| {
        DataFusionError::Execution(format!(
            "{function}: {e} (expects a sketch column such as buckets.connected_hll)"
        ))
    }
}

fn binary<'a>(function: &str, a: &'a ArrayRef) -> Result<&'a BinaryArray> {
    a.as_binary_opt::<i32>().ok_or_else(|| {
        DataFusionError::Execution(format!(
            "{function}: expects a sketch (BINARY), got {}",
            a.data_type()
        ))
    })
}

/// `hll_count(sketch) -> BIGINT`: the estimated distinct listeners in a sketch.
pub fn hll_count_udf() -> ScalarUDF {
    create_udf(
        "hll_count",
        vec![DataType::Binary],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let input = binary("hll_count", &arrays[0])?;
            let mut out = Int64Array::builder(input.len());
            for v in input.iter() {
                match v {
                    None => out.append_null(),
                    Some(bytes) => {
                        let e = estimate_bytes(bytes).map_err(bad_sketch("hll_count"))?;
                        let n = round_estimate(e);
                        out.append_value(i64::try_from(n).unwrap_or(i64::MAX));
                    }
                }
            }
            let result: ArrayRef = Arc::new(out.finish());
            if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
                Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                    &result, 0,
                )?))
            } else {
                Ok(ColumnarValue::Array(result))
            }
        }),
    )
}

/// `hll_merge(sketch) -> BINARY`: the union of the sketches in a group (NULL for no sketches).
pub fn hll_merge_udaf() -> AggregateUDF {
    create_udaf(
        "hll_merge",
        vec![DataType::Binary],
        Arc::new(DataType::Binary),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(MergeAccumulator::default()))),
        Arc::new(vec![DataType::Binary]),
    )
}

#[derive(Debug, Default)]
struct MergeAccumulator {
    union: Union,
}

impl MergeAccumulator {
    fn absorb(&mut self, a: &ArrayRef) -> Result<()> {
        for bytes in binary("hll_merge", a)?.iter().flatten() {
            self.union
                .add_bytes(bytes)
                .map_err(bad_sketch("hll_merge"))?;
        }
        Ok(())
    }

    fn value(&mut self) -> ScalarValue {
        ScalarValue::Binary(self.union.to_bytes())
    }
}

impl Accumulator for MergeAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.absorb(&values[0])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(self.value())
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.union.heap_bytes()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.value()])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.absorb(&states[0])
    }
}

/// What `version()` says: a PostgreSQL-compatible string first, as other Postgres-wire databases
/// give (clients such as SQLAlchemy read the major version from it), then what really answers.
pub const VERSION: &str = concat!(
    "PostgreSQL 16.0 on x86_64-pc-linux-gnu (earshot ",
    env!("CARGO_PKG_VERSION"),
    ", Apache DataFusion 55; read-only)"
);

/// `version() -> TEXT`, replacing DataFusion's (which says only "Apache DataFusion …").
pub fn version_udf() -> ScalarUDF {
    create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|_: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                VERSION.to_owned(),
            ))))
        }),
    )
}

/// `to_regtype(name) -> oid`: the OID of a built-in Postgres type by name, NULL for any other
/// (psycopg and SQLAlchemy look types up with it when they connect; earshot has no custom types).
pub fn to_regtype_udf() -> ScalarUDF {
    const TYPES: [(&str, i32); 17] = [
        ("bool", 16),
        ("bytea", 17),
        ("int8", 20),
        ("int2", 21),
        ("int4", 23),
        ("text", 25),
        ("json", 114),
        ("float4", 700),
        ("float8", 701),
        ("varchar", 1043),
        ("date", 1082),
        ("time", 1083),
        ("timestamp", 1114),
        ("timestamptz", 1184),
        ("interval", 1186),
        ("numeric", 1700),
        ("jsonb", 3802),
    ];
    create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let names = arrays[0].as_string_opt::<i32>().ok_or_else(|| {
                DataFusionError::Execution("to_regtype: expects a type name (TEXT)".into())
            })?;
            let oids: datafusion::arrow::array::Int32Array = names
                .iter()
                .map(|n| {
                    let n = n?
                        .trim()
                        .trim_start_matches("pg_catalog.")
                        .to_ascii_lowercase();
                    TYPES.iter().find(|(t, _)| *t == n).map(|(_, oid)| *oid)
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(oids)))
        }),
    )
}
