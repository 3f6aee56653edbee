//! Which endpoint an HTTP request asks for, from its method and path alone:
//! the probes, KServe V2 REST and Triton's extensions to it (model
//! configuration, statistics, repository), or anything else (passed through).

use http::Method;

pub use crate::tfserving::{TfMethod, TfServable};

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
    /// Triton's `GET .../config`.
    ModelConfig(&'a str, Option<&'a str>),
    /// Triton's `GET /v2/models[/{m}[/versions/{v}]]/stats`.
    ModelStats(Option<&'a str>, Option<&'a str>),
    /// Triton's `POST /v2/repository/index`.
    RepositoryIndex,
    /// Triton's `POST /v2/repository/models/{m}/load` (`true`) or `/unload`.
    RepositoryControl(&'a str, bool),
    /// Triton's `GET /v2/systemsharedmemory[/region/{r}]/status`.
    ShmStatus(Option<&'a str>),
    /// Triton's `POST /v2/systemsharedmemory/region/{r}/register`.
    ShmRegister(&'a str),
    /// Triton's `POST /v2/systemsharedmemory[/region/{r}]/unregister`.
    ShmUnregister(Option<&'a str>),
    /// The seed ticket's `POST /ml/models/{m}/predict`.
    Predict(&'a str),
    /// `POST /ml/models/{m}/feedback`: ground truth for served answers.
    Feedback(&'a str),
    /// TF Serving's `POST /v1/models/{m}[/versions/{v}|/labels/{l}]:{predict|classify|regress}`.
    TfPredict(&'a str, TfServable<'a>, TfMethod),
    /// TF Serving's `GET /v1/models/{m}[/versions/{v}|/labels/{l}]` (model status).
    TfStatus(&'a str, TfServable<'a>),
    /// TF Serving's `GET /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata`.
    TfMetadata(&'a str, TfServable<'a>),
    /// TorchServe's `POST` (or `PUT`) `/predictions/{m}[/{v}]` (`false`) or `/explanations/{m}[/{v}]` (`true`).
    TsPredict(&'a str, Option<&'a str>, bool),
    /// TorchServe's `GET /ping`.
    TsPing,
    /// A path we know, with the wrong method.
    WrongMethod(&'static str),
    /// Anything else: passed through to the default upstream.
    Other,
}

/// `/v1/models/...` as TF Serving's REST API routes it; `Other` for what it would not serve.
fn classify_tf<'a>(method: &Method, rest: &'a str) -> Endpoint<'a> {
    let get = method == Method::GET || method == Method::HEAD;
    // The verb follows the last segment: `m:predict`, `m/versions/3:predict`.
    let (rest, verb) = match rest.rsplit_once(':') {
        Some((r, v)) if !v.contains('/') => (r, Some(v)),
        _ => (rest, None),
    };
    let mut parts = rest.split('/');
    let model = match parts.next() {
        Some(m) if !m.is_empty() => m,
        _ => return Endpoint::Other,
    };
    let servable = match (parts.clone().next(), parts.clone().nth(1)) {
        (Some("versions"), Some(v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            parts.nth(1);
            // Version 0 is "the latest" to OpenVINO Model Server and its `ovmsclient`,
            // which always names a version: the A/B split, as an unversioned path.
            if v.bytes().all(|b| b == b'0') {
                TfServable::Latest
            } else {
                TfServable::Version(v)
            }
        }
        (Some("labels"), Some(l)) if !l.is_empty() => {
            parts.nth(1);
            TfServable::Label(l)
        }
        (Some("versions" | "labels"), _) => return Endpoint::Other,
        _ => TfServable::Latest,
    };
    match (parts.next(), parts.next(), verb) {
        (None, _, Some(v)) => {
            let m = match v {
                "predict" => TfMethod::Predict,
                "classify" => TfMethod::Classify,
                "regress" => TfMethod::Regress,
                _ => return Endpoint::Other,
            };
            if method == Method::POST {
                Endpoint::TfPredict(model, servable, m)
            } else {
                Endpoint::WrongMethod("POST")
            }
        }
        (None, _, None) if get => Endpoint::TfStatus(model, servable),
        (Some("metadata"), None, None) if get => Endpoint::TfMetadata(model, servable),
        (None, _, None) | (Some("metadata"), None, None) => Endpoint::WrongMethod("GET"),
        _ => Endpoint::Other,
    }
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
        "/v2/models/stats" => return simple(Endpoint::ModelStats(None, None)),
        "/v2/repository/index" => return post(method, Endpoint::RepositoryIndex),
        "/v2/systemsharedmemory/status" => return simple(Endpoint::ShmStatus(None)),
        "/v2/systemsharedmemory/unregister" => return post(method, Endpoint::ShmUnregister(None)),
        "/ping" => return simple(Endpoint::TsPing),
        _ => {}
    }
    for (prefix, explain) in [("/predictions/", false), ("/explanations/", true)] {
        if let Some(rest) = path.strip_prefix(prefix) {
            let mut parts = rest.split('/');
            let (Some(m), v, None) = (parts.next().filter(|m| !m.is_empty()), parts.next(), parts.next()) else {
                return Endpoint::Other;
            };
            return match v {
                Some("") => Endpoint::Other,
                // TorchServe's own examples upload with `curl -T` (a PUT).
                v if method == Method::PUT => Endpoint::TsPredict(m, v, explain),
                v => post(method, Endpoint::TsPredict(m, v, explain)),
            };
        }
    }
    if let Some(rest) = path.strip_prefix("/v2/systemsharedmemory/region/") {
        return match rest.split_once('/') {
            Some((r, "status")) if !r.is_empty() => simple(Endpoint::ShmStatus(Some(r))),
            Some((r, "register")) if !r.is_empty() => post(method, Endpoint::ShmRegister(r)),
            Some((r, "unregister")) if !r.is_empty() => post(method, Endpoint::ShmUnregister(Some(r))),
            _ => Endpoint::Other,
        };
    }
    if let Some(rest) = path.strip_prefix("/v2/repository/models/") {
        return match rest.split_once('/') {
            Some((m, "load")) if !m.is_empty() => post(method, Endpoint::RepositoryControl(m, true)),
            Some((m, "unload")) if !m.is_empty() => post(method, Endpoint::RepositoryControl(m, false)),
            _ => Endpoint::Other,
        };
    }
    if let Some(rest) = path.strip_prefix("/v1/models/") {
        return classify_tf(method, rest);
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
        "config" => simple(Endpoint::ModelConfig(model, version)),
        "stats" => simple(Endpoint::ModelStats(Some(model), version)),
        "infer" if method == Method::POST => Endpoint::Infer(model, version),
        "infer" => Endpoint::WrongMethod("POST"),
        _ => Endpoint::Other,
    }
}

impl Endpoint<'_> {
    /// Triton's system shared memory endpoints (served only when the extension is on).
    pub fn is_shared_memory(&self) -> bool {
        matches!(self, Endpoint::ShmStatus(_) | Endpoint::ShmRegister(_) | Endpoint::ShmUnregister(_))
    }
}

fn post<'a>(method: &Method, e: Endpoint<'a>) -> Endpoint<'a> {
    if method == Method::POST {
        e
    } else {
        Endpoint::WrongMethod("POST")
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
            (&get, "/v2/models/mlp/config", Endpoint::ModelConfig("mlp", None)),
            (&get, "/v2/models/mlp/versions/2/config", Endpoint::ModelConfig("mlp", Some("2"))),
            (&get, "/v2/models/stats", Endpoint::ModelStats(None, None)),
            (&get, "/v2/models/mlp/stats", Endpoint::ModelStats(Some("mlp"), None)),
            (&get, "/v2/models/mlp/versions/1/stats", Endpoint::ModelStats(Some("mlp"), Some("1"))),
            (&post, "/v2/repository/index", Endpoint::RepositoryIndex),
            (&get, "/v2/repository/index", Endpoint::WrongMethod("POST")),
            (&post, "/v2/repository/models/mlp/load", Endpoint::RepositoryControl("mlp", true)),
            (&post, "/v2/repository/models/mlp/unload", Endpoint::RepositoryControl("mlp", false)),
            (&post, "/v2/repository/models/mlp/reload", Endpoint::Other),
            (&post, "/v2/repository/models//load", Endpoint::Other),
            (&get, "/v2/systemsharedmemory/status", Endpoint::ShmStatus(None)),
            (&get, "/v2/systemsharedmemory/region/in/status", Endpoint::ShmStatus(Some("in"))),
            (&post, "/v2/systemsharedmemory/region/in/register", Endpoint::ShmRegister("in")),
            (&post, "/v2/systemsharedmemory/region/in/unregister", Endpoint::ShmUnregister(Some("in"))),
            (&post, "/v2/systemsharedmemory/unregister", Endpoint::ShmUnregister(None)),
            (&get, "/v2/systemsharedmemory/region/in/register", Endpoint::WrongMethod("POST")),
            (&get, "/v2/systemsharedmemory/region//status", Endpoint::Other),
            (&post, "/v1/models/x:predict", Endpoint::TfPredict("x", TfServable::Latest, TfMethod::Predict)),
            (
                &post,
                "/v1/models/x/versions/3:predict",
                Endpoint::TfPredict("x", TfServable::Version("3"), TfMethod::Predict),
            ),
            (
                &post,
                "/v1/models/x/labels/canary:classify",
                Endpoint::TfPredict("x", TfServable::Label("canary"), TfMethod::Classify),
            ),
            (&post, "/v1/models/x:regress", Endpoint::TfPredict("x", TfServable::Latest, TfMethod::Regress)),
            (&post, "/v1/models/x:explain", Endpoint::Other),
            (&get, "/v1/models/x:predict", Endpoint::WrongMethod("POST")),
            (&get, "/v1/models/x", Endpoint::TfStatus("x", TfServable::Latest)),
            (&get, "/v1/models/x/versions/2", Endpoint::TfStatus("x", TfServable::Version("2"))),
            (&get, "/v1/models/x/labels/stable/metadata", Endpoint::TfMetadata("x", TfServable::Label("stable"))),
            (&get, "/v1/models/x/metadata", Endpoint::TfMetadata("x", TfServable::Latest)),
            (&post, "/v1/models/x/metadata", Endpoint::WrongMethod("GET")),
            (&get, "/v1/models/x/versions/abc", Endpoint::Other),
            (&post, "/v1/models/x/versions/0:predict", Endpoint::TfPredict("x", TfServable::Latest, TfMethod::Predict)),
            (&get, "/v1/models/x/versions/", Endpoint::Other),
            (&get, "/v1/models/", Endpoint::Other),
            (&get, "/v1/models/x/other", Endpoint::Other),
            (&get, "/v2/models/", Endpoint::Other),
            (&get, "/v2/models/mlp/versions/", Endpoint::Other),
            (&post, "/ml/models/mlp/predict", Endpoint::Predict("mlp")),
            (&post, "/ml/models/mlp/feedback", Endpoint::Feedback("mlp")),
            (&get, "/ml/models/mlp/predict", Endpoint::WrongMethod("POST")),
            (&post, "/ml/models/mlp/metrics", Endpoint::Other),
            (&get, "/ping", Endpoint::TsPing),
            (&post, "/ping", Endpoint::WrongMethod("GET")),
            (&post, "/predictions/mlp", Endpoint::TsPredict("mlp", None, false)),
            (&post, "/predictions/mlp/2.0", Endpoint::TsPredict("mlp", Some("2.0"), false)),
            (&post, "/explanations/mlp", Endpoint::TsPredict("mlp", None, true)),
            (&post, "/explanations/mlp/1", Endpoint::TsPredict("mlp", Some("1"), true)),
            (&get, "/predictions/mlp", Endpoint::WrongMethod("POST")),
            (&Method::PUT, "/predictions/mlp", Endpoint::TsPredict("mlp", None, false)),
            (&post, "/predictions/", Endpoint::Other),
            (&post, "/predictions/mlp/", Endpoint::Other),
            (&post, "/predictions/mlp/1/extra", Endpoint::Other),
        ];
        for (m, p, want) in cases {
            assert_eq!(classify(m, p), want, "{m} {p}");
        }
    }
}
