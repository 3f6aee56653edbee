//! A reading error (bad YAML, an unknown field, a wrong type) as a
//! [`FieldError`]: serde-saphyr's message and location, with the field path
//! when the reader knows it.

use crate::validated::FieldError;

pub(super) fn field_error(path: impl Into<String>, e: &serde_saphyr::Error) -> FieldError {
    let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
    FieldError { path: path.into(), line, column, message: first_line(&e.to_string()) }
}

/// serde-saphyr renders a snippet under the message; the message line is what we report.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    // The location is reported separately.
    match line.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((_, msg)) => msg.to_string(),
        None => line.to_string(),
    }
}
