//! Validated content-routing rules (`models.M.rules`): what a request must
//! carry to match, and where a matching request goes. Tried in order before
//! the weighted split; the first match wins (docs/routing.md).

use std::sync::Arc;

use crate::protocol::Protocol;

#[derive(Debug, Clone, PartialEq)]
pub struct RuleConfig {
    /// Its name in metrics and access logs: the configured one, else `rules[i]`.
    pub name: Arc<str>,
    /// Every condition must hold (at least one is given).
    pub conditions: RuleConditions,
    pub target: RuleTarget,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuleConditions {
    /// Lower-case header (gRPC metadata) names and what their value must be.
    pub headers: Vec<(String, ValueMatch)>,
    /// Any of these protocols; empty: any protocol.
    pub protocols: Vec<Protocol>,
    pub path: Option<PathMatch>,
    /// Request parameters (V2 `parameters`, TF Serving `signature_name`) and what they must be.
    pub parameters: Vec<(Arc<str>, ValueMatch)>,
}

impl RuleConditions {
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.protocols.is_empty() && self.path.is_none() && self.parameters.is_empty()
    }
}

/// What a header's or parameter's value must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// Equal to one of these (a header with several values: any of them).
    AnyOf(Vec<String>),
    /// Starting with this.
    Prefix(String),
    /// Present (`true`) or absent (`false`), whatever its value.
    Present(bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// The path starts with this (written with a trailing `*`).
    Prefix(String),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// Where a matching request goes: a variant of the rule's own model, another
/// model's split, or a variant of another model. At least one is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTarget {
    /// Another model or graph; `None`: the rule's own model.
    pub model: Option<Arc<str>>,
    /// A variant of the target model; `None`: the target model's own routing (its rules, then its split).
    pub variant: Option<Arc<str>>,
}
