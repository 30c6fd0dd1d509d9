//! `anomaly_score('model', f1, f2, ...)`: scores rows with a model from the registry;
//! `anomaly_surprise('model', f1, f2, ...)`: the score as a surprise, −log10 of the
//! fraction of training windows scoring at least as high (the online detectors' scale);
//! `is_anomaly('model', f1, f2, ...)`: whether the score is above the threshold (1.0);
//! `top_contributors('model', f1, f2, ...)`: says which features make the score.
//! Keyed models (per-device baselines) take the key first: `('model', device, f1, ...)`.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use forewarn_scorer::ModelRegistry;
use ndarray::Array2;

/// What a model function returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Output {
    /// `anomaly_score`: the normalised score.
    Score,
    /// `top_contributors`: e.g. `"vibration_floor 71%, temperature_rise 22%"`.
    Contributors,
    /// `is_anomaly`: score above 1.0.
    IsAnomaly,
    /// `anomaly_surprise`: −log10 of the training windows' exceedance fraction.
    Surprise,
}

/// Field metadata key marking a result column as a surprise (−log10 of a probability),
/// so that a sink can turn a false-alert rate into a threshold on it.
pub const SCORE_SCALE_KEY: &str = "forewarn.score_scale";
/// [`SCORE_SCALE_KEY`]'s value for surprises.
pub const SURPRISE: &str = "surprise";

/// The scoring function. Values above 1.0 are anomalous; NULL when a feature is NULL.
/// Also, as [`AnomalyScore::top_contributors`], the explanation function.
#[derive(Debug)]
pub struct AnomalyScore {
    models: Arc<ModelRegistry>,
    signature: Signature,
    output: Output,
}

/// Features listed by `top_contributors` at most.
const TOP: usize = 3;

impl AnomalyScore {
    /// A scoring function backed by `models`.
    pub fn new(models: Arc<ModelRegistry>) -> Self {
        AnomalyScore {
            models,
            signature: Signature::variadic_any(Volatility::Volatile),
            output: Output::Score,
        }
    }

    /// `top_contributors('model', f1, ...)`: the (up to three) features with the largest
    /// share of the row's score, as text like `"vibration_floor 71%, temperature_rise 22%"`;
    /// NULL when a feature is NULL.
    pub fn top_contributors(models: Arc<ModelRegistry>) -> Self {
        AnomalyScore {
            output: Output::Contributors,
            ..Self::new(models)
        }
    }

    /// `anomaly_surprise('model', f1, ...)`: the model's score as a surprise, −log10 of
    /// the fraction of its training windows that scored at least as high; NULL when a
    /// feature is NULL. Needs a model trained with its score tail.
    pub fn surprise(models: Arc<ModelRegistry>) -> Self {
        AnomalyScore {
            output: Output::Surprise,
            ..Self::new(models)
        }
    }

    /// `is_anomaly('model', f1, ...)`: true when the score is above the threshold (1.0),
    /// NULL when a feature is NULL.
    pub fn is_anomaly(models: Arc<ModelRegistry>) -> Self {
        AnomalyScore {
            output: Output::IsAnomaly,
            ..Self::new(models)
        }
    }
}

impl PartialEq for AnomalyScore {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.models, &other.models) && self.output == other.output
    }
}
impl Eq for AnomalyScore {}
impl Hash for AnomalyScore {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name().hash(state)
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

impl AnomalyScore {
    fn data_type(&self) -> DataType {
        match self.output {
            Output::Score | Output::Surprise => DataType::Float64,
            Output::Contributors => DataType::Utf8,
            Output::IsAnomaly => DataType::Boolean,
        }
    }
}

impl ScalarUDFImpl for AnomalyScore {
    fn name(&self) -> &str {
        match self.output {
            Output::Score => "anomaly_score",
            Output::Contributors => "top_contributors",
            Output::IsAnomaly => "is_anomaly",
            Output::Surprise => "anomaly_surprise",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(self.data_type())
    }
    // Checked at planning time, so a wrong model name or feature count is reported
    // when the query is submitted, not when the first window closes.
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let f = self.name();
        let Some(name) = model_name(args.scalar_arguments.first().copied().flatten()) else {
            return plan_err!(
                "{f} needs the model name as a string literal first: {f}('model', feature, ...)"
            );
        };
        let Some(model) = self.models.get(name) else {
            let known = self.models.names();
            return plan_err!(
                "unknown model '{name}' in {f} (loaded models: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        };
        let got = args.arg_fields.len() - 1;
        if got != model.arity() {
            let key = match &model.key {
                Some(k) => format!("a key ({k}) and "),
                None => String::new(),
            };
            return plan_err!(
                "model '{name}' takes {key}{} features ({}), but {f} passes {got} arguments after the name",
                model.features.len(),
                model.features.join(", ")
            );
        }
        let first_feature = 1 + usize::from(model.key.is_some());
        for f in &args.arg_fields[first_feature..] {
            if !f.data_type().is_numeric() {
                return plan_err!(
                    "{f} features must be numeric; '{}' is {}",
                    f.name(),
                    f.data_type()
                );
            }
        }
        if self.output == Output::Surprise {
            if model.calibration.tail.is_none() {
                return plan_err!(
                    "anomaly_surprise cannot use model '{name}': {}",
                    forewarn_scorer::NO_TAIL
                );
            }
            let meta = [(SCORE_SCALE_KEY.to_string(), SURPRISE.to_string())];
            return Ok(Arc::new(
                Field::new(self.name(), self.data_type(), true).with_metadata(meta.into()),
            ));
        }
        Ok(Arc::new(Field::new(self.name(), self.data_type(), true)))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let name = match args.args.first() {
            Some(ColumnarValue::Scalar(s)) => model_name(Some(s)).map(str::to_string),
            _ => None,
        };
        let Some(name) = name else {
            return exec_err!("{}: model name must be a literal", self.name());
        };
        let Some(model) = self.models.get(&name) else {
            return exec_err!("model '{name}' is no longer loaded");
        };
        let first_feature = 1 + usize::from(model.key.is_some());
        if args.args.len() != 1 + model.arity() {
            return exec_err!(
                "model '{name}' now takes {} arguments after its name; restart the query",
                model.arity()
            );
        }
        let keys: Option<StringArray> = if model.key.is_some() {
            let k = args.args[1].to_array(n)?;
            Some(cast(&k, &DataType::Utf8)?.as_string::<i32>().clone())
        } else {
            None
        };
        let key_of = |i: usize| -> Option<&str> {
            keys.as_ref()
                .and_then(|k| (!k.is_null(i)).then(|| k.value(i)))
        };
        let cols: Vec<ArrayRef> = args.args[first_feature..]
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
        let fail = |e: forewarn_scorer::ModelError| {
            datafusion::error::DataFusionError::Execution(e.to_string())
        };
        if self.output == Output::Contributors {
            let mut out = Vec::with_capacity(n);
            for (i, row) in x.outer_iter().enumerate() {
                let shares = model
                    .contributions_keyed(key_of(i), &row.to_vec())
                    .map_err(fail)?;
                out.push((!shares.is_empty()).then(|| {
                    shares
                        .iter()
                        .take(TOP)
                        .filter(|(_, s)| *s >= 0.005)
                        .map(|(f, s)| format!("{f} {:.0}%", s * 100.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                }));
            }
            return Ok(ColumnarValue::Array(Arc::new(StringArray::from(out))));
        }
        let scores = if self.output == Output::Surprise {
            let k: Vec<Option<&str>> = (0..n).map(key_of).collect();
            model.surprise_keyed(&k, x.view())
        } else if keys.is_some() {
            let k: Vec<Option<&str>> = (0..n).map(key_of).collect();
            model.score_keyed(&k, x.view())
        } else {
            model.score(x.view())
        }
        .map_err(fail)?;
        if self.output == Output::IsAnomaly {
            let out: BooleanArray = scores
                .iter()
                .map(|s| s.is_finite().then_some(*s > 1.0))
                .collect();
            return Ok(ColumnarValue::Array(Arc::new(out)));
        }
        let out: Float64Array = scores.iter().map(|s| s.is_finite().then_some(*s)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
