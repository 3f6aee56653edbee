//! The raw shape of content-routing rules (`models.M.rules`): conditions on
//! a request's headers, path, protocol and parameters, and the variant or
//! model a matching request goes to (docs/routing.md).

use std::collections::BTreeMap;

use serde::Deserialize;

use serde_saphyr::Spanned as S;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// The rule's name in metrics and access logs (default `rules[i]`).
    pub name: Option<S<String>>,
    #[serde(rename = "match")]
    pub matches: S<RawRuleMatch>,
    /// A variant of the rule's model, or of `model` when given.
    pub variant: Option<S<String>>,
    /// Another model (or graph) whose variants serve a matching request.
    pub model: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRuleMatch {
    /// Header (gRPC metadata) name → what its value must be.
    #[serde(default)]
    pub headers: BTreeMap<String, S<RawValueMatch>>,
    /// One protocol name or a list of them.
    pub protocol: Option<S<RawOneOrMany>>,
    /// An exact path, or a prefix written with a trailing `*`.
    pub path: Option<S<String>>,
    /// Request parameter name → what its value must be.
    #[serde(default)]
    pub parameters: BTreeMap<String, S<RawValueMatch>>,
}

/// What a header or parameter value must be: a value, one of a list, or an operator.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawValueMatch {
    One(RawScalar),
    AnyOf(Vec<RawScalar>),
    Op(RawValueOp),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValueOp {
    pub prefix: Option<String>,
    pub present: Option<bool>,
}

/// A YAML scalar compared as text (`1`, `true` and `gold` alike).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawScalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl RawScalar {
    pub fn text(&self) -> String {
        match self {
            RawScalar::Bool(b) => b.to_string(),
            RawScalar::Int(i) => i.to_string(),
            RawScalar::Float(f) => f.to_string(),
            RawScalar::Str(s) => s.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawOneOrMany {
    One(String),
    Many(Vec<String>),
}
