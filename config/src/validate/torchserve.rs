//! `variants[].torchserve`: the translation between a TorchServe client's
//! JSON body and a tensor model's one input. What the model itself looks
//! like (one input, its datatype) is known only once its backend answers, so
//! the front end checks that per request; here, the declaration's own form.

use serde_saphyr::Spanned;

use super::fields::{escaped, loc, Errors};
use crate::raw::RawTorchServe;
use crate::validated::{TorchServeBody, TorchServeTranslation};

/// Checks a JSON pointer (RFC 6901): empty, or `/`-separated tokens in which
/// `~` is only ever `~0` or `~1`.
fn pointer_problem(p: &str) -> Option<String> {
    if p.is_empty() {
        return None;
    }
    if !p.starts_with('/') {
        return Some(format!(
            "`{}` is not a JSON pointer: it starts with `/` (e.g. `/instances`), or is empty for the whole body",
            escaped(p)
        ));
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Some(format!("`{}`: in a JSON pointer `~` is only `~0` (a `~`) or `~1` (a `/`)", escaped(p)));
        }
    }
    None
}

pub(super) fn translation(errs: &mut Errors, path: &str, raw: &Spanned<RawTorchServe>) -> TorchServeTranslation {
    let t = &raw.value;
    let input = t.input.as_ref().map_or(String::new(), |s| s.value.clone());
    if let (Some(problem), Some(s)) = (pointer_problem(&input), &t.input) {
        errs.at(format!("{path}.input"), loc(s), problem);
    }
    let output = t.output.as_ref().map(|s| s.value.clone()).filter(|s| !s.is_empty());
    let body = match t.body.as_ref() {
        None => TorchServeBody::Tensor,
        Some(s) => match s.value.as_str() {
            "tensor" => TorchServeBody::Tensor,
            "row" => TorchServeBody::Row,
            other => {
                errs.at(
                    format!("{path}.body"),
                    loc(s),
                    format!("unknown body `{}` (use `tensor`: the body is the whole tensor, or `row`: one row of a batched input)", escaped(other)),
                );
                TorchServeBody::Tensor
            }
        },
    };
    let output_tensor = match &t.output_tensor {
        Some(s) if s.value.is_empty() => {
            errs.at(format!("{path}.output_tensor"), loc(s), "must name one of the model's outputs (or be left out)");
            None
        }
        Some(s) => Some(s.value.clone()),
        None => None,
    };
    TorchServeTranslation { input, output, body, output_tensor }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::validated::TorchServeBody;

    const HEAD: &str = "backends:\n  o: {kind: v2-http, endpoints: ['http://h:1']}\nmodels:\n  m:\n    variants:\n      - name: a\n        backend: o\n";

    #[test]
    fn a_translation_is_read_with_its_defaults() {
        let c = crate::ValidatedConfig::parse(&format!("{HEAD}        torchserve: {{}}\n"), Path::new(".")).unwrap();
        let t = c.models["m"].variants[0].torchserve.clone().unwrap();
        assert_eq!((t.input.as_str(), t.output, t.body, t.output_tensor), ("", None, TorchServeBody::Tensor, None));
        let yaml = format!(
            "{HEAD}        torchserve: {{input: /instances, output: predictions, body: row, output_tensor: y}}\n"
        );
        let t = crate::ValidatedConfig::parse(&yaml, Path::new(".")).unwrap().models["m"].variants[0]
            .torchserve
            .clone()
            .unwrap();
        assert_eq!(t.input, "/instances");
        assert_eq!(t.output.as_deref(), Some("predictions"));
        assert_eq!(t.body, TorchServeBody::Row);
        assert_eq!(t.output_tensor.as_deref(), Some("y"));
        let c = crate::ValidatedConfig::parse(HEAD, Path::new(".")).unwrap();
        assert_eq!(c.models["m"].variants[0].torchserve, None);
    }

    #[test]
    fn bad_declarations_are_named() {
        let cases = [
            ("{input: instances}", "m.variants[0].torchserve.input", "is not a JSON pointer"),
            ("{input: /a~2b}", "m.variants[0].torchserve.input", "`~` is only `~0`"),
            ("{body: rows}", "m.variants[0].torchserve.body", "unknown body `rows`"),
            ("{output_tensor: ''}", "m.variants[0].torchserve.output_tensor", "must name one of the model's outputs"),
        ];
        for (decl, path, want) in cases {
            let e = crate::ValidatedConfig::parse(&format!("{HEAD}        torchserve: {decl}\n"), Path::new("."))
                .expect_err(decl);
            assert!(
                e.errors.iter().any(|f| f.path.ends_with(path) && f.message.contains(want)),
                "{decl}: {:?}",
                e.errors
            );
        }
        let e = crate::ValidatedConfig::parse(&format!("{HEAD}        torchserve: {{inputs: /x}}\n"), Path::new("."))
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `inputs`"), "{e}");
    }
}
