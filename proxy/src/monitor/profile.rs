//! Reference profiles: what `switchyard profile` writes and a drift monitor
//! compares live traffic with. A profile is JSON (`switchyard-profile/1`):
//! per input and output feature, its quantile bins and their shares
//! (numeric) or its top-k values (categorical); never the samples.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use switchyard_runtime::Tensor;
use switchyard_stats::drift::{Feature, FeatureProfile, Value};

use super::features::{column_name, for_each_value, rows_and_width};

/// The format tag every profile carries.
pub const FORMAT: &str = "switchyard-profile/1";

/// A reference profile of a model's inputs and (optionally) outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Rows the profile was built from.
    pub rows: u64,
    pub inputs: Vec<ColumnProfile>,
    pub outputs: Vec<ColumnProfile>,
}

/// One feature, with the tensor column it is read from.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnProfile {
    pub tensor: String,
    pub column: usize,
    pub feature: Feature,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    format: String,
    rows: u64,
    inputs: Vec<ColumnFile>,
    #[serde(default)]
    outputs: Vec<ColumnFile>,
}

// No `deny_unknown_fields` here: serde cannot combine it with `flatten`.
#[derive(Serialize, Deserialize)]
struct ColumnFile {
    name: String,
    tensor: String,
    column: usize,
    #[serde(flatten)]
    kind: KindFile,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum KindFile {
    Numeric { ks_edges: Vec<f64>, ks_ref: Vec<f64>, psi_edges: Vec<f64>, psi_ref: Vec<f64> },
    Categorical { values: Vec<String>, shares: Vec<f64>, other: f64 },
}

impl Profile {
    pub fn to_json(&self) -> String {
        let col = |c: &ColumnProfile| ColumnFile {
            name: c.feature.name.clone(),
            tensor: c.tensor.clone(),
            column: c.column,
            kind: match &c.feature.profile {
                FeatureProfile::Numeric { ks_edges, ks_ref, psi_edges, psi_ref } => KindFile::Numeric {
                    ks_edges: ks_edges.clone(),
                    ks_ref: ks_ref.clone(),
                    psi_edges: psi_edges.clone(),
                    psi_ref: psi_ref.clone(),
                },
                FeatureProfile::Categorical { values, shares, other } => {
                    KindFile::Categorical { values: values.clone(), shares: shares.clone(), other: *other }
                }
            },
        };
        let file = ProfileFile {
            format: FORMAT.to_string(),
            rows: self.rows,
            inputs: self.inputs.iter().map(col).collect(),
            outputs: self.outputs.iter().map(col).collect(),
        };
        serde_json::to_string(&file).expect("a profile serialises")
    }

    /// Parses and checks a profile: bins ascending, shares matching them.
    pub fn from_json(text: &str) -> Result<Profile, String> {
        let f: ProfileFile = serde_json::from_str(text).map_err(|e| format!("not a profile: {e}"))?;
        if f.format != FORMAT {
            return Err(format!("format `{}` is not `{FORMAT}`", f.format));
        }
        let col = |c: ColumnFile| -> Result<ColumnProfile, String> {
            let profile = match c.kind {
                KindFile::Numeric { ks_edges, ks_ref, psi_edges, psi_ref } => {
                    for (edges, shares, what) in [(&ks_edges, &ks_ref, "ks"), (&psi_edges, &psi_ref, "psi")] {
                        if shares.len() != edges.len() + 1 || !edges.windows(2).all(|w| w[0] < w[1]) {
                            return Err(format!(
                                "feature `{}`: {what}_edges must ascend and {what}_ref have one share more",
                                c.name
                            ));
                        }
                    }
                    FeatureProfile::Numeric { ks_edges, ks_ref, psi_edges, psi_ref }
                }
                KindFile::Categorical { values, shares, other } => {
                    if values.len() != shares.len() {
                        return Err(format!("feature `{}`: values and shares differ in length", c.name));
                    }
                    FeatureProfile::Categorical { values, shares, other }
                }
            };
            Ok(ColumnProfile { tensor: c.tensor, column: c.column, feature: Feature { name: c.name, profile } })
        };
        Ok(Profile {
            rows: f.rows,
            inputs: f.inputs.into_iter().map(col).collect::<Result<_, _>>()?,
            outputs: f.outputs.into_iter().map(col).collect::<Result<_, _>>()?,
        })
    }

    pub fn read(path: &Path) -> Result<Profile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading profile {}: {e}", path.display()))?;
        Profile::from_json(&text).map_err(|e| format!("profile {}: {e}", path.display()))
    }
}

/// Collects reference values column by column, then summarises them.
#[derive(Default)]
pub struct ProfileBuilder {
    inputs: Side,
    outputs: Side,
}

#[derive(Default)]
struct Side {
    rows: u64,
    columns: Vec<Column>,
    index: HashMap<(String, usize), usize>,
}

struct Column {
    tensor: String,
    column: usize,
    name: String,
    numbers: Vec<f64>,
    categories: Vec<Vec<u8>>,
}

impl Side {
    fn add(&mut self, tensors: &[Tensor]) {
        let mut rows = 0;
        for t in tensors {
            let Some((n, width)) = rows_and_width(t) else { continue };
            rows = rows.max(n);
            for_each_value(t, |_, c, v| {
                let i = *self.index.entry((t.name.clone(), c)).or_insert_with(|| {
                    self.columns.push(Column {
                        tensor: t.name.clone(),
                        column: c,
                        name: column_name(&t.name, width, c),
                        numbers: Vec::new(),
                        categories: Vec::new(),
                    });
                    self.columns.len() - 1
                });
                match v {
                    Value::Number(x) if x.is_finite() => self.columns[i].numbers.push(x),
                    Value::Number(_) => {}
                    Value::Category(b) => self.columns[i].categories.push(b.to_vec()),
                }
            });
        }
        self.rows += rows as u64;
    }

    fn build(self) -> Vec<ColumnProfile> {
        let mut out: Vec<ColumnProfile> = self
            .columns
            .into_iter()
            .filter_map(|c| {
                let profile = if c.categories.is_empty() {
                    FeatureProfile::numeric(&c.numbers)?
                } else {
                    let strings: Vec<String> =
                        c.categories.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
                    FeatureProfile::categorical(strings.iter().map(String::as_str))?
                };
                Some(ColumnProfile { tensor: c.tensor, column: c.column, feature: Feature { name: c.name, profile } })
            })
            .collect();
        out.sort_by(|a, b| (&a.tensor, a.column).cmp(&(&b.tensor, b.column)));
        out
    }
}

impl ProfileBuilder {
    /// Adds one request's input tensors.
    pub fn add_inputs(&mut self, tensors: &[Tensor]) {
        self.inputs.add(tensors);
    }

    /// Adds one answer's output tensors.
    pub fn add_outputs(&mut self, tensors: &[Tensor]) {
        self.outputs.add(tensors);
    }

    pub fn input_rows(&self) -> u64 {
        self.inputs.rows
    }

    pub fn build(self) -> Profile {
        Profile { rows: self.inputs.rows, inputs: self.inputs.build(), outputs: self.outputs.build() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use switchyard_runtime::DataType;

    #[test]
    fn a_profile_round_trips_through_json() {
        let data: Vec<u8> = (0..200).flat_map(|i| (i as f32 / 100.0).to_le_bytes()).collect();
        let mut b = ProfileBuilder::default();
        b.add_inputs(&[Tensor::new("input", DataType::Fp32, vec![100, 2], Bytes::from(data))]);
        let p = b.build();
        assert_eq!((p.rows, p.inputs.len()), (100, 2));
        assert_eq!(p.inputs[1].feature.name, "input[1]");
        assert_eq!(Profile::from_json(&p.to_json()).unwrap(), p);
    }

    #[test]
    fn malformed_profiles_are_refused_with_the_reason() {
        assert!(Profile::from_json("{}").unwrap_err().contains("not a profile"));
        let bad = r#"{"format":"switchyard-profile/1","rows":1,"inputs":[{"name":"x","tensor":"x","column":0,
            "kind":"numeric","ks_edges":[2,1],"ks_ref":[0.5,0,0.5],"psi_edges":[],"psi_ref":[1]}]}"#;
        assert!(Profile::from_json(bad).unwrap_err().contains("ks_edges must ascend"));
    }
}
