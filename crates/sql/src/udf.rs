//! `anomaly_score('model', f1, f2, ...)`: scores rows with a model from the registry.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use forewarn_scorer::ModelRegistry;
use ndarray::Array2;

/// The scoring function. Values above 1.0 are anomalous; NULL when a feature is NULL.
#[derive(Debug)]
pub struct AnomalyScore {
    models: Arc<ModelRegistry>,
    signature: Signature,
}

impl AnomalyScore {
    /// A scoring function backed by `models`.
    pub fn new(models: Arc<ModelRegistry>) -> Self {
        AnomalyScore {
            models,
            signature: Signature::variadic_any(Volatility::Volatile),
        }
    }
}

impl PartialEq for AnomalyScore {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.models, &other.models)
    }
}
impl Eq for AnomalyScore {}
impl Hash for AnomalyScore {
    fn hash<H: Hasher>(&self, state: &mut H) {
        "anomaly_score".hash(state)
    }
}

fn model_name(arg: Option<&ScalarValue>) -> Option<&str> {
    match arg {
        Some(ScalarValue::Utf8(Some(s)))
        | Some(ScalarValue::LargeUtf8(Some(s)))
        | Some(ScalarValue::Utf8View(Some(s))) => Some(s),
        _ => None,
    }
}

impl ScalarUDFImpl for AnomalyScore {
    fn name(&self) -> &str {
        "anomaly_score"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    // Checked at planning time, so a wrong model name or feature count is reported
    // when the query is submitted, not when the first window closes.
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let Some(name) = model_name(args.scalar_arguments.first().copied().flatten()) else {
            return plan_err!("anomaly_score needs the model name as a string literal first: anomaly_score('model', feature, ...)");
        };
        let Some(model) = self.models.get(name) else {
            let known = self.models.names();
            return plan_err!(
                "unknown model '{name}' in anomaly_score (loaded models: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        };
        let got = args.arg_fields.len() - 1;
        if got != model.features.len() {
            return plan_err!(
                "model '{name}' takes {} features ({}), but anomaly_score passes {got}",
                model.features.len(),
                model.features.join(", ")
            );
        }
        for f in &args.arg_fields[1..] {
            if !f.data_type().is_numeric() {
                return plan_err!(
                    "anomaly_score features must be numeric; '{}' is {}",
                    f.name(),
                    f.data_type()
                );
            }
        }
        Ok(Arc::new(Field::new(self.name(), DataType::Float64, true)))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let name = match args.args.first() {
            Some(ColumnarValue::Scalar(s)) => model_name(Some(s)).map(str::to_string),
            _ => None,
        };
        let Some(name) = name else {
            return exec_err!("anomaly_score: model name must be a literal");
        };
        let Some(model) = self.models.get(&name) else {
            return exec_err!("model '{name}' is no longer loaded");
        };
        let cols: Vec<ArrayRef> = args.args[1..]
            .iter()
            .map(|c| {
                c.to_array(n)
                    .and_then(|a| Ok(cast(&a, &DataType::Float64)?))
            })
            .collect::<Result<_>>()?;
        let mut x = Array2::<f64>::zeros((n, cols.len()));
        for (j, c) in cols.iter().enumerate() {
            let c = c.as_primitive::<Float64Type>();
            for i in 0..n {
                x[[i, j]] = if c.is_null(i) { f64::NAN } else { c.value(i) };
            }
        }
        let scores = model
            .score(x.view())
            .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
        let out: Float64Array = scores.iter().map(|s| s.is_finite().then_some(*s)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
