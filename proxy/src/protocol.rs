//! What a request's front end tells routing about it beyond its model name:
//! its `Protocol` (a `switchyard_config` type, so configs name the same
//! values) and, as `Param`, a request parameter as content-routing rules see
//! it — a V2 `parameters` entry, TF Serving's `signature_name`. A leaf:
//! listeners, the pipeline and `routing::rules` all use it.

pub use switchyard_config::Protocol;

/// One request parameter's value, borrowed from the decoded or read request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Param<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
}

impl<'a> Param<'a> {
    /// A JSON value (V2 REST `parameters`) as a parameter; `None` for arrays,
    /// objects and null, which no rule matches.
    pub fn from_json(v: &'a serde_json::Value) -> Option<Param<'a>> {
        match v {
            serde_json::Value::String(s) => Some(Param::Str(s)),
            serde_json::Value::Bool(b) => Some(Param::Bool(*b)),
            serde_json::Value::Number(n) => Some(match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => Param::Uint(u),
                (None, Some(i), _) => Param::Int(i),
                (None, None, Some(f)) => Param::Float(f),
                (None, None, None) => return None,
            }),
            _ => None,
        }
    }

    /// Whether the value is `want` as a config writes it: strings compare
    /// exactly; a number or boolean equals the text that parses to it
    /// (`priority: 1` matches the integer 1 and the string "1" alike).
    pub fn equals(&self, want: &str) -> bool {
        match *self {
            Param::Str(s) => s == want,
            Param::Bool(b) => want.parse::<bool>() == Ok(b),
            Param::Int(i) => want.parse::<i64>() == Ok(i),
            Param::Uint(u) => want.parse::<u64>() == Ok(u),
            Param::Float(f) => want.parse::<f64>() == Ok(f),
        }
    }

    /// Whether the value starts with `prefix`: strings only.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        matches!(self, Param::Str(s) if s.starts_with(prefix))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_compare_as_configs_write_them() {
        let cases = [
            (json!("gold"), "gold", true),
            (json!("gold"), "Gold", false),
            (json!(true), "true", true),
            (json!(false), "true", false),
            (json!(3), "3", true),
            (json!(-3), "-3", true),
            (json!(3), "03x", false),
            (json!(0.5), "0.5", true),
        ];
        for (v, want, ok) in cases {
            assert_eq!(Param::from_json(&v).unwrap().equals(want), ok, "{v} vs {want}");
        }
        assert_eq!(Param::from_json(&json!([1])), None);
        assert!(Param::Str("classify-v2").has_prefix("classify"));
        assert!(!Param::Uint(12).has_prefix("1"));
    }
}
