//! Functions that build a value far bigger than their arguments — `repeat('x', 2000000000)`,
//! `lpad`, `replace`, `range(1, 10000000000)` — are wrapped so that the output they are about to
//! build is reserved from the query memory pool first. A call whose output would not fit is a
//! memory-limit error before a byte is allocated. Other functions grow a value at most by a small
//! factor of their inputs (`concat`, `to_hex`), which the pool's limit on the inputs bounds.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::compute::kernels::length::length;
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, FieldRef, IntervalUnit, TimeUnit};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// How a function's output size is bounded from its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: |s| × n bytes.
    Repeat,
    /// `lpad(s, n [, fill])`, `rpad`: n characters.
    Pad,
    /// `replace(s, from, to)`: at most |s| / |from| copies of `to`, plus `s`.
    Replace,
    /// `regexp_replace(s, pattern, to …)`: a pattern may match between every two characters.
    RegexpReplace,
    /// `array_repeat(v, n)`, `array_resize(a, n …)`: n elements.
    Elements,
    /// `range(start, stop [, step])`, `generate_series`: (stop − start) / step elements.
    Series,
    /// `concat(a, b, …)`: the sum of the arguments.
    Sum,
    /// `concat_ws(sep, a, b, …)`: the arguments, with a separator between each two.
    Joined,
}

const WRAPPED: [(&str, Growth); 10] = [
    ("concat", Growth::Sum),
    ("concat_ws", Growth::Joined),
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("array_repeat", Growth::Elements),
    ("array_resize", Growth::Elements),
    ("range", Growth::Series),
];

/// Replaces the context's amplifying functions by bounded ones reserving from its memory pool.
pub fn bound_amplifying_functions(ctx: &SessionContext) {
    let pool = ctx.runtime_env().memory_pool.clone();
    let state = ctx.state();
    let functions = state.scalar_functions();
    let mut names: Vec<(&str, Growth)> = WRAPPED.to_vec();
    names.push(("generate_series", Growth::Series));
    for (name, growth) in names {
        if let Some(inner) = functions.get(name) {
            // Volatile, so that planning never folds a call into a literal: a folded value would be
            // built outside any operator and copied with the plan.
            let mut signature = inner.signature().clone();
            signature.volatility = Volatility::Volatile;
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
                inner: inner.clone(),
                signature,
                growth,
                pool: pool.clone(),
            }));
        }
    }
}

#[derive(Debug)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    signature: Signature,
    growth: Growth,
    pool: Arc<dyn MemoryPool>,
}

impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.growth == other.growth && self.inner == other.inner
    }
}

impl Eq for Bounded {}

impl Hash for Bounded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.growth.hash(state);
        self.inner.name().hash(state);
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let need = output_bound(self.growth, &args.args)?;
        let reservation = MemoryConsumer::new(format!("{}()", self.name())).register(&self.pool);
        reservation.try_grow(need).map_err(|e| {
            DataFusionError::ResourcesExhausted(format!(
                "{}() would build a value of about {} bytes: {}",
                self.name(),
                need,
                e.find_root()
            ))
        })?;
        // Held while the batch holding the value is in use, so several values built for one
        // batch (`concat(repeat(…), repeat(…))`) count together.
        let out = self.inner.invoke_with_args(args);
        crate::exec::hold(reservation);
        out
    }
}

/// An upper bound, in bytes, of what the call builds (saturating).
fn output_bound(growth: Growth, args: &[ColumnarValue]) -> Result<usize> {
    let arrays = ColumnarValue::values_to_arrays(args)?;
    let rows = arrays.first().map_or(0, |a| a.len());
    let mut total: u128 = 0;
    match growth {
        Growth::Repeat => {
            let (s, n) = (bytes(&arrays[0])?, ints(arrays.get(1))?);
            for i in 0..rows {
                total += at(&s, i) * at(&n, i);
            }
        }
        Growth::Pad => {
            let n = ints(arrays.get(1))?;
            for i in 0..rows {
                total += at(&n, i);
            }
        }
        Growth::Replace | Growth::RegexpReplace => {
            let s = bytes(&arrays[0])?;
            let from = bytes(&arrays[1])?;
            let to = arrays.get(2).map(bytes).transpose()?;
            for i in 0..rows {
                let len = at(&s, i);
                let copies = match growth {
                    Growth::Replace => len / at(&from, i).max(1),
                    _ => len + 1,
                };
                total += len + copies * to.as_ref().map_or(0, |t| at(t, i));
            }
        }
        Growth::Elements => {
            let value = arrays[0].get_array_memory_size() / rows.max(1) + 16;
            let n = ints(arrays.get(1))?;
            for i in 0..rows {
                total += at(&n, i) * value as u128;
            }
        }
        Growth::Series => total = series_bound(&arrays, rows)?,
        Growth::Sum | Growth::Joined => {
            let lens = arrays.iter().map(bytes).collect::<Result<Vec<_>>>()?;
            let separators = match growth {
                Growth::Joined => lens.len().saturating_sub(2) as u128,
                _ => 0,
            };
            for i in 0..rows {
                let all: u128 = lens.iter().map(|l| at(l, i)).sum();
                let sep = lens.first().map_or(0, |l| at(l, i));
                total += all + sep * separators.saturating_sub(1);
            }
        }
    }
    Ok(usize::try_from(total).unwrap_or(usize::MAX))
}

fn series_bound(arrays: &[ArrayRef], rows: usize) -> Result<u128> {
    const ELEMENT: u128 = 8;
    // One argument: range(stop) from 0.
    let (start, stop) = match arrays.len() {
        1 => (None, &arrays[0]),
        _ => (Some(&arrays[0]), &arrays[1]),
    };
    let temporal = matches!(
        stop.data_type(),
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
    );
    if temporal {
        let nanos = |a: &ArrayRef| -> Result<Int64Array> {
            let ms = cast_with_options(
                a,
                &DataType::Timestamp(TimeUnit::Millisecond, None),
                &CastOptions::default(),
            )?;
            Ok(
                cast_with_options(&ms, &DataType::Int64, &CastOptions::default())?
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .clone(),
            )
        };
        let (from, to) = (nanos(&arrays[0])?, nanos(stop)?);
        let step = arrays.get(2);
        let mut total = 0u128;
        for i in 0..rows {
            let span_ms = (to.value(i.min(to.len() - 1)) as i128
                - from.value(i.min(from.len() - 1)) as i128)
                .unsigned_abs();
            let step_ms = step.map_or(86_400_000, |s| interval_ms(s, i)).max(1);
            total += (span_ms / step_ms + 1) * ELEMENT;
        }
        return Ok(total);
    }
    let start = start.map(signed).transpose()?;
    let stop = signed(stop)?;
    let step = arrays.get(2).map(signed).transpose()?;
    let mut total = 0u128;
    for i in 0..rows {
        let from = start.as_ref().map_or(0, |s| at(s, i));
        let span = (at(&stop, i) - from).unsigned_abs();
        let step = step.as_ref().map_or(1, |s| at(s, i).unsigned_abs()).max(1);
        total += (span / step + 1) * ELEMENT;
    }
    Ok(total)
}

/// The shortest a step interval can be, in milliseconds (a month counts as 28 days).
fn interval_ms(a: &ArrayRef, i: usize) -> u128 {
    let i = i.min(a.len().saturating_sub(1));
    if a.is_null(i) {
        return 1;
    }
    const DAY: i128 = 86_400_000;
    let ms: i128 = match a.data_type() {
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            let v = a
                .as_primitive::<datafusion::arrow::datatypes::IntervalMonthDayNanoType>()
                .value(i);
            v.months as i128 * 28 * DAY + v.days as i128 * DAY + v.nanoseconds as i128 / 1_000_000
        }
        DataType::Interval(IntervalUnit::DayTime) => {
            let v = a
                .as_primitive::<datafusion::arrow::datatypes::IntervalDayTimeType>()
                .value(i);
            v.days as i128 * DAY + v.milliseconds as i128
        }
        DataType::Interval(IntervalUnit::YearMonth) => {
            let v = a
                .as_primitive::<datafusion::arrow::datatypes::IntervalYearMonthType>()
                .value(i);
            v as i128 * 28 * DAY
        }
        _ => 1,
    };
    ms.unsigned_abs()
}

/// Byte lengths of a string or binary array (0 for null).
fn bytes(a: &ArrayRef) -> Result<Vec<u128>> {
    let text = match a.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary | DataType::LargeBinary => {
            a.clone()
        }
        _ => cast_with_options(a, &DataType::LargeUtf8, &CastOptions::default())?,
    };
    let lens = cast_with_options(&length(&text)?, &DataType::Int64, &CastOptions::default())?;
    let lens = lens.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
    Ok((0..lens.len())
        .map(|i| {
            if lens.is_null(i) {
                0
            } else {
                lens.value(i).max(0) as u128
            }
        })
        .collect())
}

/// Non-negative counts of an integer argument (0 for null or negative, or when absent).
fn ints(a: Option<&ArrayRef>) -> Result<Vec<u128>> {
    let Some(a) = a else { return Ok(vec![0]) };
    Ok(signed(a)?.into_iter().map(|v| v.max(0) as u128).collect())
}

/// An integer argument's values (0 for null).
fn signed(a: &ArrayRef) -> Result<Vec<i128>> {
    let v = cast_with_options(a, &DataType::Int64, &CastOptions::default())?;
    let v = v.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
    Ok((0..v.len())
        .map(|i| if v.is_null(i) { 0 } else { v.value(i) as i128 })
        .collect())
}

/// Row `i` of an argument, a scalar argument being one value for every row.
fn at<T: Copy + Default>(v: &[T], i: usize) -> T {
    v.get(i.min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}
