//! Condition-monitoring aggregates that DataFusion lacks: `rms`, `kurtosis`, `skewness`,
//! `crest_factor` and `peak_to_peak`.
//!
//! All five share one mergeable state (count, mean, central moment sums M2..M4, min, max),
//! combined with Pébay's pairwise formulas, so they work across the streaming split:
//! each pane's Partial aggregate keeps the state, the Final aggregate merges them.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};

/// Which statistic a [`MomentAggregate`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Moment {
    /// Root mean square: sqrt(mean(x²)).
    Rms,
    /// Pearson kurtosis m4 / m2² (3 for a Gaussian signal; not the excess kurtosis).
    Kurtosis,
    /// Skewness m3 / m2^1.5 (population form).
    Skewness,
    /// Peak over RMS: max(|x|) / rms.
    CrestFactor,
    /// max(x) − min(x).
    PeakToPeak,
}

impl Moment {
    fn name(&self) -> &'static str {
        match self {
            Moment::Rms => "rms",
            Moment::Kurtosis => "kurtosis",
            Moment::Skewness => "skewness",
            Moment::CrestFactor => "crest_factor",
            Moment::PeakToPeak => "peak_to_peak",
        }
    }
}

/// All five aggregates, ready to register.
pub fn moment_udafs() -> Vec<AggregateUDF> {
    [
        Moment::Rms,
        Moment::Kurtosis,
        Moment::Skewness,
        Moment::CrestFactor,
        Moment::PeakToPeak,
    ]
    .into_iter()
    .map(|m| {
        AggregateUDF::new_from_impl(MomentAggregate {
            moment: m,
            signature: Signature::numeric(1, Volatility::Immutable),
        })
    })
    .collect()
}

/// A condition-monitoring aggregate over one numeric column (NULLs are skipped).
#[derive(Debug)]
pub struct MomentAggregate {
    moment: Moment,
    signature: Signature,
}

impl PartialEq for MomentAggregate {
    fn eq(&self, o: &Self) -> bool {
        self.moment == o.moment
    }
}
impl Eq for MomentAggregate {}
impl Hash for MomentAggregate {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.moment.hash(h)
    }
}

const STATE: [&str; 7] = ["n", "mean", "m2", "m3", "m4", "min", "max"];

impl AggregateUDFImpl for MomentAggregate {
    fn name(&self) -> &str {
        self.moment.name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(MomentAccumulator {
            moment: self.moment,
            s: Stats::default(),
        }))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(STATE
            .iter()
            .map(|n| {
                Arc::new(Field::new(
                    format!("{}[{n}]", args.name),
                    DataType::Float64,
                    true,
                ))
            })
            .collect())
    }
}

/// Count, mean, central moment sums and extremes of a set of values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    n: f64,
    mean: f64,
    m2: f64,
    m3: f64,
    m4: f64,
    min: f64,
    max: f64,
}

impl Stats {
    /// Adds one value.
    pub fn push(&mut self, x: f64) {
        self.merge(&Stats {
            n: 1.0,
            mean: x,
            m2: 0.0,
            m3: 0.0,
            m4: 0.0,
            min: x,
            max: x,
        });
    }

    /// Combines another set into this one (Pébay 2008, pairwise update).
    pub fn merge(&mut self, b: &Stats) {
        if b.n == 0.0 {
            return;
        }
        if self.n == 0.0 {
            *self = *b;
            return;
        }
        let a = *self;
        let n = a.n + b.n;
        let d = b.mean - a.mean;
        let (d2, d3, d4) = (d * d, d * d * d, d * d * d * d);
        self.n = n;
        self.mean = a.mean + d * b.n / n;
        self.m2 = a.m2 + b.m2 + d2 * a.n * b.n / n;
        self.m3 = a.m3
            + b.m3
            + d3 * a.n * b.n * (a.n - b.n) / (n * n)
            + 3.0 * d * (a.n * b.m2 - b.n * a.m2) / n;
        self.m4 = a.m4
            + b.m4
            + d4 * a.n * b.n * (a.n * a.n - a.n * b.n + b.n * b.n) / (n * n * n)
            + 6.0 * d2 * (a.n * a.n * b.m2 + b.n * b.n * a.m2) / (n * n)
            + 4.0 * d * (a.n * b.m3 - b.n * a.m3) / n;
        self.min = a.min.min(b.min);
        self.max = a.max.max(b.max);
    }

    /// The statistic, or `None` when undefined (no values; zero variance for shape statistics).
    pub fn value(&self, m: Moment) -> Option<f64> {
        if self.n == 0.0 {
            return None;
        }
        let rms = ((self.m2 + self.n * self.mean * self.mean) / self.n).sqrt();
        let v = match m {
            Moment::Rms => rms,
            Moment::PeakToPeak => self.max - self.min,
            Moment::CrestFactor if rms > 0.0 => self.max.abs().max(self.min.abs()) / rms,
            Moment::Kurtosis if self.m2 > 0.0 => self.n * self.m4 / (self.m2 * self.m2),
            Moment::Skewness if self.m2 > 0.0 => self.n.sqrt() * self.m3 / self.m2.powf(1.5),
            _ => return None,
        };
        v.is_finite().then_some(v)
    }
}

#[derive(Debug)]
struct MomentAccumulator {
    moment: Moment,
    s: Stats,
}

fn f64s(a: &ArrayRef) -> Result<ArrayRef> {
    Ok(cast(a, &DataType::Float64)?)
}

impl Accumulator for MomentAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let a = f64s(&values[0])?;
        for v in a.as_primitive::<Float64Type>().iter().flatten() {
            if v.is_finite() {
                self.s.push(v);
            }
        }
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(self.s.value(self.moment)))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let s = self.s;
        Ok([s.n, s.mean, s.m2, s.m3, s.m4, s.min, s.max]
            .into_iter()
            .map(|v| ScalarValue::Float64(Some(v)))
            .collect())
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let cols: Vec<ArrayRef> = states.iter().map(f64s).collect::<Result<_>>()?;
        let cols: Vec<_> = cols
            .iter()
            .map(|c| c.as_primitive::<Float64Type>())
            .collect();
        for i in 0..cols[0].len() {
            if cols[0].is_null(i) {
                continue;
            }
            let v = |k: usize| cols[k].value(i);
            self.s.merge(&Stats {
                n: v(0),
                mean: v(1),
                m2: v(2),
                m3: v(3),
                m4: v(4),
                min: v(5),
                max: v(6),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(xs: &[f64], m: Moment) -> f64 {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let c = |p: i32| xs.iter().map(|x| (x - mean).powi(p)).sum::<f64>() / n;
        let rms = (xs.iter().map(|x| x * x).sum::<f64>() / n).sqrt();
        let (mn, mx) = xs
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        match m {
            Moment::Rms => rms,
            Moment::Kurtosis => c(4) / (c(2) * c(2)),
            Moment::Skewness => c(3) / c(2).powf(1.5),
            Moment::CrestFactor => mx.abs().max(mn.abs()) / rms,
            Moment::PeakToPeak => mx - mn,
        }
    }

    #[test]
    fn merged_partials_equal_a_direct_computation() {
        // A vibration-like signal with an offset and impulses, split into uneven parts.
        let xs: Vec<f64> = (0..1000)
            .map(|i| 50.0 + (i as f64 * 0.37).sin() + if i % 97 == 0 { 6.0 } else { 0.0 })
            .collect();
        for m in [
            Moment::Rms,
            Moment::Kurtosis,
            Moment::Skewness,
            Moment::CrestFactor,
            Moment::PeakToPeak,
        ] {
            let mut whole = Stats::default();
            xs.iter().for_each(|x| whole.push(*x));
            let mut merged = Stats::default();
            for part in xs.chunks(137) {
                let mut p = Stats::default();
                part.iter().for_each(|x| p.push(*x));
                merged.merge(&p);
            }
            let want = direct(&xs, m);
            for got in [whole.value(m).unwrap(), merged.value(m).unwrap()] {
                assert!(
                    (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                    "{m:?}: {got} vs {want}"
                );
            }
        }
        assert_eq!(Stats::default().value(Moment::Rms), None);
        let mut one = Stats::default();
        one.push(2.0);
        assert_eq!(one.value(Moment::Kurtosis), None);
        assert_eq!(one.value(Moment::Rms), Some(2.0));
    }
}
