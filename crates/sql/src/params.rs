//! Named query parameters: `$stream` in the SQL, `--param stream=town-hall-main` on the command line.
//!
//! Values are bound into the plan as typed literals, never pasted into the SQL text, so a value can
//! not change what the query does. Each value is read as the type DataFusion inferred for its
//! placeholder (a timestamp for `bucket_start >= $from`, text for `stream_id = $stream`).

use std::collections::{BTreeMap, HashMap};

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::logical_expr::LogicalPlan;

use crate::SqlError;

/// Parameter values by name (without the `$`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    values: BTreeMap<String, String>,
    /// At the interactive prompt, values given at start apply to the queries that use them only.
    allow_unused: bool,
}

impl Params {
    /// Reads `name=value` pairs, as given to `--param`.
    pub fn from_pairs<I, S>(pairs: I) -> Result<Params, SqlError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut map = BTreeMap::new();
        for pair in pairs {
            let pair = pair.as_ref();
            let Some((name, value)) = pair.split_once('=') else {
                return Err(SqlError::Param(format!(
                    "parameter {pair:?} has no value: write it as name=value, e.g. stream=town-hall-main"
                )));
            };
            let name = name.trim().trim_start_matches('$');
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(SqlError::Param(format!(
                    "parameter name {name:?} must be letters, digits and _"
                )));
            }
            if map.insert(name.to_string(), value.to_string()).is_some() {
                return Err(SqlError::Param(format!("parameter {name} is given twice")));
            }
        }
        Ok(Params {
            values: map,
            allow_unused: false,
        })
    }

    /// The same values, but a query that does not use one of them is not an error.
    pub fn allowing_unused(mut self) -> Params {
        self.allow_unused = true;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Binds the values into `plan`. Every placeholder needs a value and every value a placeholder.
    pub fn bind(&self, plan: LogicalPlan) -> Result<LogicalPlan, SqlError> {
        let types = plan
            .get_parameter_types()
            .map_err(|e| SqlError::Query(e.to_string()))?;
        if types.is_empty() && (self.values.is_empty() || self.allow_unused) {
            return Ok(plan);
        }
        let mut wanted: Vec<&String> = types.keys().collect();
        wanted.sort();
        if let Some(positional) = wanted
            .iter()
            .find(|id| id[1..].chars().all(|c| c.is_ascii_digit()))
        {
            return Err(SqlError::Param(format!(
                "positional parameter {positional} cannot be given by name; use named parameters such as $stream"
            )));
        }
        let missing: Vec<String> = wanted
            .iter()
            .filter(|id| !self.values.contains_key(&id[1..]))
            .map(|id| format!("--param {}=…", &id[1..]))
            .collect();
        if !missing.is_empty() {
            return Err(SqlError::Param(format!(
                "the query needs {}",
                missing.join(" ")
            )));
        }
        let mut values = HashMap::new();
        for (name, value) in &self.values {
            let id = format!("${name}");
            let Some(ty) = types.get(&id) else {
                if self.allow_unused {
                    continue;
                }
                let takes: Vec<&str> = wanted.iter().map(|id| &id[1..]).collect();
                return Err(SqlError::Param(format!(
                    "unknown parameter {name}; the query takes {}",
                    if takes.is_empty() {
                        "none".to_string()
                    } else {
                        takes.join(", ")
                    }
                )));
            };
            let ty = ty.clone().unwrap_or(DataType::Utf8);
            let scalar = ScalarValue::try_from_string(value.clone(), &ty).map_err(|_| {
                SqlError::Param(format!("parameter {name}: {value:?} is not a valid {ty}"))
            })?;
            values.insert(name.clone(), scalar.into());
        }
        plan.replace_params_with_values(&ParamValues::Map(values))
            .map_err(|e| SqlError::Query(e.to_string()))
    }
}
