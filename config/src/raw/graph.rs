//! The raw shape of the `graphs` section: inference graphs whose steps call
//! other routes (docs/ensembles.md).

use std::collections::BTreeMap;

use serde::Deserialize;

use serde_saphyr::Spanned as S;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGraph {
    pub steps: S<Vec<S<RawStep>>>,
    /// The working tensors the graph answers with; absent: the last step's outputs.
    pub outputs: Option<S<Vec<S<String>>>>,
}

/// One step: exactly one of `model` (a sequence step), `fan_out` (with
/// `combine`) and `condition`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub name: S<String>,
    pub model: Option<S<String>>,
    pub fan_out: Option<S<Vec<S<RawMember>>>>,
    pub combine: Option<S<RawCombine>>,
    pub condition: Option<S<RawCondition>>,
    /// Model input name → working tensor it is filled from.
    #[serde(default)]
    pub inputs: BTreeMap<String, S<String>>,
    /// Model output name → working tensor it becomes.
    #[serde(default)]
    pub outputs: BTreeMap<String, S<String>>,
    pub optional: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMember {
    pub model: S<String>,
    pub optional: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCombine {
    /// `average`, `majority_vote`, `weighted_vote`, `max` or `concat`.
    pub op: S<String>,
    /// The output of every member that is combined.
    pub tensor: S<String>,
    /// The combined tensor's name; absent: `tensor`.
    pub output: Option<S<String>>,
    /// One per member, for `average` and `weighted_vote`.
    pub weights: Option<S<Vec<S<f64>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    /// A working tensor holding one value.
    pub tensor: Option<S<String>>,
    /// A request parameter.
    pub parameter: Option<S<String>>,
    pub cases: S<Vec<S<RawCase>>>,
    /// The model when no case holds; absent: the request is refused (400).
    pub default: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCase {
    pub equals: Option<S<String>>,
    pub above: Option<S<f64>>,
    pub below: Option<S<f64>>,
    pub model: S<String>,
}
