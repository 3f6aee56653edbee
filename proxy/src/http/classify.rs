//! Which endpoint an HTTP request asks for, from its method and path alone:
//! the probes, KServe V2 REST, or anything else (passed through).

use http::Method;

/// What a request path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint<'a> {
    Health,
    Ready,
    Startup,
    V2Live,
    V2Ready,
    V2Server,
    ModelMetadata(&'a str, Option<&'a str>),
    ModelReady(&'a str, Option<&'a str>),
    Infer(&'a str, Option<&'a str>),
    /// The seed ticket's `POST /ml/models/{m}/predict`.
    Predict(&'a str),
    /// `POST /ml/models/{m}/feedback`: ground truth for served answers.
    Feedback(&'a str),
    /// A path we know, with the wrong method.
    WrongMethod(&'static str),
    /// Anything else: passed through to the default upstream.
    Other,
}

pub fn classify<'a>(method: &Method, path: &'a str) -> Endpoint<'a> {
    let get = method == Method::GET || method == Method::HEAD;
    let simple = |e: Endpoint<'a>| if get { e } else { Endpoint::WrongMethod("GET") };
    match path {
        "/health" => return simple(Endpoint::Health),
        "/ready" => return simple(Endpoint::Ready),
        "/startup" => return simple(Endpoint::Startup),
        "/v2/health/live" => return simple(Endpoint::V2Live),
        "/v2/health/ready" => return simple(Endpoint::V2Ready),
        "/v2" | "/v2/" => return simple(Endpoint::V2Server),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/ml/models/") {
        return match rest.split_once('/') {
            Some((m, "predict")) if !m.is_empty() && method == Method::POST => Endpoint::Predict(m),
            Some((m, "feedback")) if !m.is_empty() && method == Method::POST => Endpoint::Feedback(m),
            Some((m, "predict" | "feedback")) if !m.is_empty() => Endpoint::WrongMethod("POST"),
            _ => Endpoint::Other,
        };
    }
    let Some(rest) = path.strip_prefix("/v2/models/") else {
        return Endpoint::Other;
    };
    let mut parts = rest.split('/');
    let model = match parts.next() {
        Some(m) if !m.is_empty() => m,
        _ => return Endpoint::Other,
    };
    let mut next = parts.next();
    let mut version = None;
    if next == Some("versions") {
        match parts.next() {
            Some(v) if !v.is_empty() => version = Some(v),
            _ => return Endpoint::Other,
        }
        next = parts.next();
    }
    let action = match (next, parts.next()) {
        (None, _) | (Some(""), None) => "",
        (Some(a), None) => a,
        _ => return Endpoint::Other,
    };
    match action {
        "" => simple(Endpoint::ModelMetadata(model, version)),
        "ready" => simple(Endpoint::ModelReady(model, version)),
        "infer" if method == Method::POST => Endpoint::Infer(model, version),
        "infer" => Endpoint::WrongMethod("POST"),
        _ => Endpoint::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_classify() {
        let get = Method::GET;
        let post = Method::POST;
        let cases: Vec<(&Method, &str, Endpoint)> = vec![
            (&get, "/health", Endpoint::Health),
            (&get, "/v2", Endpoint::V2Server),
            (&get, "/v2/health/ready", Endpoint::V2Ready),
            (&get, "/v2/models/mlp", Endpoint::ModelMetadata("mlp", None)),
            (&get, "/v2/models/mlp/versions/2", Endpoint::ModelMetadata("mlp", Some("2"))),
            (&get, "/v2/models/mlp/ready", Endpoint::ModelReady("mlp", None)),
            (&get, "/v2/models/mlp/versions/3/ready", Endpoint::ModelReady("mlp", Some("3"))),
            (&post, "/v2/models/mlp/infer", Endpoint::Infer("mlp", None)),
            (&post, "/v2/models/mlp/versions/1/infer", Endpoint::Infer("mlp", Some("1"))),
            (&get, "/v2/models/mlp/infer", Endpoint::WrongMethod("POST")),
            (&post, "/health", Endpoint::WrongMethod("GET")),
            (&get, "/v2/models/mlp/config", Endpoint::Other),
            (&get, "/v2/repository/index", Endpoint::Other),
            (&post, "/v1/models/x:predict", Endpoint::Other),
            (&get, "/v2/models/", Endpoint::Other),
            (&get, "/v2/models/mlp/versions/", Endpoint::Other),
            (&post, "/ml/models/mlp/predict", Endpoint::Predict("mlp")),
            (&post, "/ml/models/mlp/feedback", Endpoint::Feedback("mlp")),
            (&get, "/ml/models/mlp/predict", Endpoint::WrongMethod("POST")),
            (&post, "/ml/models/mlp/metrics", Endpoint::Other),
        ];
        for (m, p, want) in cases {
            assert_eq!(classify(m, p), want, "{m} {p}");
        }
    }
}
