//! `hll_merge(sketch)` and `hll_count(sketch)` over earshot's sketch bytes.
//!
//! Bad bytes are a query error naming the function and what is wrong, never a panic.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, ColumnarValue, ScalarUDF, Volatility, create_udaf, create_udf,
};
use earshot_sketch::Sketch;

fn read(function: &str, bytes: &[u8]) -> Result<Sketch> {
    Sketch::from_bytes(bytes).map_err(|e| {
        DataFusionError::Execution(format!(
            "{function}: {e} (expects a sketch column such as buckets.connected_hll)"
        ))
    })
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
                        let n = read("hll_count", bytes)?.count();
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
    union: Option<Sketch>,
}

impl MergeAccumulator {
    fn absorb(&mut self, a: &ArrayRef) -> Result<()> {
        for bytes in binary("hll_merge", a)?.iter().flatten() {
            let s = read("hll_merge", bytes)?;
            match &mut self.union {
                Some(u) => u.merge(&s),
                None => self.union = Some(s),
            }
        }
        Ok(())
    }

    fn value(&mut self) -> ScalarValue {
        ScalarValue::Binary(self.union.as_mut().map(Sketch::to_bytes))
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
        std::mem::size_of_val(self) + if self.union.is_some() { 16 * 1024 } else { 0 }
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.value()])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.absorb(&states[0])
    }
}
