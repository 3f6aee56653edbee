//! The `switchyard.io/*` annotations: their names, their defaults, and the
//! one step that turns a pod's annotations (over the sidecar defaults the
//! command line gives) into a checked [`Plan`], reporting every bad value at once.

use serde_json::{Map, Value};

/// `enabled` | `disabled`: whether the pod gets the sidecar.
pub const INJECT: &str = "switchyard.io/inject";
/// Name of the ConfigMap holding the Switchyard config (required, unless the command line names a default).
pub const CONFIG: &str = "switchyard.io/config";
/// Key of that ConfigMap holding the config file.
pub const CONFIG_KEY: &str = "switchyard.io/config-key";
pub const HTTP_PORT: &str = "switchyard.io/http-port";
/// A port, or `none` for no gRPC listener.
pub const GRPC_PORT: &str = "switchyard.io/grpc-port";
pub const METRICS_PORT: &str = "switchyard.io/metrics-port";
pub const IMAGE: &str = "switchyard.io/image";
pub const CPU_REQUEST: &str = "switchyard.io/cpu-request";
pub const CPU_LIMIT: &str = "switchyard.io/cpu-limit";
pub const MEMORY_REQUEST: &str = "switchyard.io/memory-request";
pub const MEMORY_LIMIT: &str = "switchyard.io/memory-limit";
/// `emptyDir`, or the name of a PersistentVolumeClaim (or of a pod volume) for the state directory.
pub const STATE: &str = "switchyard.io/state";
/// The address Switchyard's listeners bind: `0.0.0.0` (default), or `::` in an IPv6-only cluster.
pub const BIND_ADDRESS: &str = "switchyard.io/bind-address";
/// `true` (default): a native sidecar (an init container with `restartPolicy: Always`);
/// `false`: a plain container, for clusters older than Kubernetes 1.29.
pub const NATIVE_SIDECAR: &str = "switchyard.io/native-sidecar";
/// The model server's HTTP port (for `switchyard inject`'s Service retargeting).
pub const SERVER_HTTP_PORT: &str = "switchyard.io/server-http-port";
/// The model server's gRPC port (for `switchyard inject`'s Service retargeting).
pub const SERVER_GRPC_PORT: &str = "switchyard.io/server-grpc-port";
/// On a Service: `enabled` retargets its ports from the model server's to Switchyard's.
pub const RETARGET: &str = "switchyard.io/retarget";
/// Written by the injector: the Switchyard version that injected the pod.
pub const INJECTED: &str = "switchyard.io/injected";

pub const DEFAULT_CONFIG_KEY: &str = "config.yaml";
/// Clear of Triton's 8000 (HTTP), 8001 (gRPC) and 8002 (metrics), and of MLServer's 8080/8081/8082.
pub const DEFAULT_HTTP_PORT: u16 = 8100;
pub const DEFAULT_GRPC_PORT: u16 = 8101;
pub const DEFAULT_METRICS_PORT: u16 = 8102;
pub const DEFAULT_SERVER_HTTP_PORT: u16 = 8000;
pub const DEFAULT_SERVER_GRPC_PORT: u16 = 8001;
pub const DEFAULT_IMAGE: &str = concat!("switchyard:", env!("CARGO_PKG_VERSION"));
pub const DEFAULT_CPU_REQUEST: &str = "100m";
pub const DEFAULT_MEMORY_REQUEST: &str = "128Mi";
/// Memory is limited (a leak must not take the node's model server down with it); CPU is
/// not by default, as CFS throttling adds tail latency to every request through the proxy.
pub const DEFAULT_MEMORY_LIMIT: &str = "1Gi";

/// The sidecar settings the command line gives; annotations override each.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub image: String,
    /// The ConfigMap used when a pod names none; `None`: the annotation is required.
    pub config_map: Option<String>,
    pub cpu_request: String,
    pub cpu_limit: Option<String>,
    pub memory_request: String,
    pub memory_limit: Option<String>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            image: DEFAULT_IMAGE.to_string(),
            config_map: None,
            cpu_request: DEFAULT_CPU_REQUEST.to_string(),
            cpu_limit: None,
            memory_request: DEFAULT_MEMORY_REQUEST.to_string(),
            memory_limit: Some(DEFAULT_MEMORY_LIMIT.to_string()),
        }
    }
}

impl Defaults {
    /// Checks the command line's values as annotations are checked: a bad default is a startup error.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if let Err(e) = check_image(&self.image) {
            errors.push(format!("--image {:?}: {e}", self.image));
        }
        if let Some(cm) = &self.config_map {
            if let Err(e) = check_dns_subdomain(cm) {
                errors.push(format!("--config-map {cm:?}: {e}"));
            }
        }
        let quantities = [
            ("--cpu-request", Some(&self.cpu_request)),
            ("--cpu-limit", self.cpu_limit.as_ref()),
            ("--memory-request", Some(&self.memory_request)),
            ("--memory-limit", self.memory_limit.as_ref()),
        ];
        for (flag, q) in quantities {
            if let Some(q) = q {
                if let Err(e) = parse_quantity(q) {
                    errors.push(format!("{flag} {q:?}: {e}"));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Where the state file lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    EmptyDir,
    /// A PersistentVolumeClaim name, or the name of a volume the pod already has
    /// (a StatefulSet's `volumeClaimTemplates` entry).
    Claim(String),
}

/// The checked settings for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub config_map: String,
    pub config_key: String,
    pub http_port: u16,
    pub grpc_port: Option<u16>,
    pub metrics_port: u16,
    pub image: String,
    pub cpu_request: String,
    pub cpu_limit: Option<String>,
    pub memory_request: String,
    pub memory_limit: Option<String>,
    pub state: State,
    pub native_sidecar: bool,
    pub bind: std::net::IpAddr,
}

impl Plan {
    /// `host:port` for a listener flag.
    pub fn address(&self, port: u16) -> String {
        std::net::SocketAddr::new(self.bind, port).to_string()
    }

    /// Switchyard's ports with their container-port names.
    pub fn ports(&self) -> Vec<(&'static str, u16)> {
        let mut p = vec![("sy-http", self.http_port)];
        if let Some(g) = self.grpc_port {
            p.push(("sy-grpc", g));
        }
        p.push(("sy-metrics", self.metrics_port));
        p
    }
}

/// What the `switchyard.io/inject` annotation says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Enabled,
    Disabled,
    Unset,
}

/// Reads `switchyard.io/inject`.
pub fn choice(annotations: &Map<String, Value>) -> Result<Choice, String> {
    match annotations.get(INJECT) {
        None => Ok(Choice::Unset),
        Some(Value::String(s)) if s == "enabled" => Ok(Choice::Enabled),
        Some(Value::String(s)) if s == "disabled" => Ok(Choice::Disabled),
        Some(v) => Err(format!("{INJECT}: {} is neither `enabled` nor `disabled`", show(v))),
    }
}

/// Builds the plan from the effective annotations, or every reason it cannot.
pub fn plan(annotations: &Map<String, Value>, defaults: &Defaults) -> Result<Plan, Vec<String>> {
    let mut errors = Vec::new();
    let mut get = |key: &str| -> Option<String> {
        match annotations.get(key) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            // Annotation values are strings to the API server; a YAML `8100` is a
            // mistake kubectl would reject, so it is named here rather than guessed at.
            Some(v) => {
                errors.push(format!("{key}: {} must be a string (quote it)", show(v)));
                None
            }
        }
    };
    let config_map = get(CONFIG).or_else(|| defaults.config_map.clone());
    let config_key = get(CONFIG_KEY);
    let http = get(HTTP_PORT);
    let grpc = get(GRPC_PORT);
    let metrics = get(METRICS_PORT);
    let image = get(IMAGE);
    let cpu_request = get(CPU_REQUEST);
    let cpu_limit = get(CPU_LIMIT);
    let memory_request = get(MEMORY_REQUEST);
    let memory_limit = get(MEMORY_LIMIT);
    let state = get(STATE);
    let native = get(NATIVE_SIDECAR);
    let bind = get(BIND_ADDRESS);

    let config_map = match config_map {
        None => {
            errors.push(format!(
                "{CONFIG} is missing: name the ConfigMap holding the Switchyard config (or start with --config-map)"
            ));
            String::new()
        }
        Some(cm) => {
            if let Err(e) = check_dns_subdomain(&cm) {
                errors.push(format!("{CONFIG}: {cm:?} is not a ConfigMap name: {e}"));
            }
            cm
        }
    };
    let config_key = config_key.unwrap_or_else(|| DEFAULT_CONFIG_KEY.to_string());
    if let Err(e) = check_config_key(&config_key) {
        errors.push(format!("{CONFIG_KEY}: {config_key:?} is not a ConfigMap key: {e}"));
    }
    let mut port = |key: &str, value: Option<String>, default: u16| -> u16 {
        match value {
            None => default,
            Some(v) => match v.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    errors.push(format!("{key}: {v:?} is not a port (1-65535)"));
                    default
                }
            },
        }
    };
    let http_port = port(HTTP_PORT, http, DEFAULT_HTTP_PORT);
    let metrics_port = port(METRICS_PORT, metrics, DEFAULT_METRICS_PORT);
    let grpc_port = match grpc {
        Some(v) if v.trim() == "none" => None,
        v => Some(port(GRPC_PORT, v, DEFAULT_GRPC_PORT)),
    };
    let mut seen: Vec<(&str, u16)> = Vec::new();
    for (key, p) in [(HTTP_PORT, Some(http_port)), (GRPC_PORT, grpc_port), (METRICS_PORT, Some(metrics_port))] {
        let Some(p) = p else { continue };
        if let Some((other, _)) = seen.iter().find(|(_, q)| *q == p) {
            errors.push(format!("{key}: port {p} is also {other}: Switchyard's ports must differ"));
        }
        seen.push((key, p));
    }

    let image = image.unwrap_or_else(|| defaults.image.clone());
    if let Err(e) = check_image(&image) {
        errors.push(format!("{IMAGE}: {image:?}: {e}"));
    }
    let mut quantity = |key: &str, value: Option<String>, default: Option<&String>| -> Option<String> {
        let v = value.or_else(|| default.cloned())?;
        match parse_quantity(&v) {
            Ok(_) => Some(v),
            Err(e) => {
                errors.push(format!("{key}: {v:?}: {e}"));
                None
            }
        }
    };
    let cpu_request = quantity(CPU_REQUEST, cpu_request, Some(&defaults.cpu_request));
    let cpu_limit = quantity(CPU_LIMIT, cpu_limit, defaults.cpu_limit.as_ref());
    let memory_request = quantity(MEMORY_REQUEST, memory_request, Some(&defaults.memory_request));
    let memory_limit = quantity(MEMORY_LIMIT, memory_limit, defaults.memory_limit.as_ref());
    for (what, req, lim) in [("cpu", &cpu_request, &cpu_limit), ("memory", &memory_request, &memory_limit)] {
        if let (Some(r), Some(l)) = (req, lim) {
            if let (Ok(rv), Ok(lv)) = (parse_quantity(r), parse_quantity(l)) {
                if rv > lv {
                    errors
                        .push(format!("switchyard.io/{what}-request {r:?} is above switchyard.io/{what}-limit {l:?}"));
                }
            }
        }
    }

    let state = match state.as_deref() {
        None | Some("emptyDir") => State::EmptyDir,
        Some(claim) => {
            if let Err(e) = check_dns_subdomain(claim) {
                errors.push(format!("{STATE}: {claim:?} is neither `emptyDir` nor a PersistentVolumeClaim name: {e}"));
            }
            State::Claim(claim.to_string())
        }
    };
    let native_sidecar = match native.as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(v) => {
            errors.push(format!("{NATIVE_SIDECAR}: {v:?} is neither `true` nor `false`"));
            true
        }
    };

    let bind = match bind {
        None => std::net::IpAddr::from([0, 0, 0, 0]),
        Some(b) => b.trim().parse().unwrap_or_else(|_| {
            errors.push(format!("{BIND_ADDRESS}: {b:?} is not an IP address (0.0.0.0, or :: for IPv6)"));
            std::net::IpAddr::from([0, 0, 0, 0])
        }),
    };

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Plan {
        config_map,
        config_key,
        http_port,
        grpc_port,
        metrics_port,
        image,
        cpu_request: cpu_request.unwrap_or_default(),
        cpu_limit,
        memory_request: memory_request.unwrap_or_default(),
        memory_limit,
        state,
        native_sidecar,
        bind,
    })
}

/// A port annotation outside the plan (the model server's ports for Service retargeting).
pub fn port_annotation(annotations: &Map<String, Value>, key: &str, default: u16) -> Result<u16, String> {
    match annotations.get(key) {
        None => Ok(default),
        Some(Value::String(s)) => match s.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("{key}: {s:?} is not a port (1-65535)")),
        },
        Some(v) => Err(format!("{key}: {} must be a string (quote it)", show(v))),
    }
}

fn show(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// RFC 1123 subdomain, as Kubernetes checks object names.
pub fn check_dns_subdomain(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be 1-253 characters");
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err("must be lowercase letters, digits, '-' and '.', starting and ending with a letter or digit");
        }
    }
    Ok(())
}

fn check_config_key(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be 1-253 characters");
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err("must be letters, digits, '-', '_' and '.'");
    }
    // The kubelet owns `..`-prefixed names in the mounted directory (`..data`, `..<timestamp>`).
    if s == "." || s.starts_with("..") {
        return Err("must not be '.' or start with '..'");
    }
    Ok(())
}

fn check_image(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("is empty");
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace");
    }
    Ok(())
}

/// A Kubernetes resource quantity (`250m`, `1.5`, `512Mi`, `1e3`), as a plain number for comparisons.
pub fn parse_quantity(s: &str) -> Result<f64, &'static str> {
    const BAD: &str = "is not a Kubernetes quantity (e.g. 250m, 2, 512Mi, 1Gi)";
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(BAD);
    }
    let n: f64 = num.parse().map_err(|_| BAD)?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if (e.starts_with('e') || e.starts_with('E')) && e.len() > 1 => {
            let exp: i32 = e[1..].parse().map_err(|_| BAD)?;
            10f64.powi(exp)
        }
        _ => return Err(BAD),
    };
    Ok(n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ann(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn quantities() {
        for (q, v) in [("250m", 0.25), ("2", 2.0), ("1.5", 1.5), ("512Mi", 512.0 * 1048576.0), ("1e3", 1000.0)] {
            assert_eq!(parse_quantity(q), Ok(v), "{q}");
        }
        for q in ["", "m", "-1", "1..2", "1Xi", "1 Gi", "1e", "1.2.3"] {
            assert!(parse_quantity(q).is_err(), "{q:?} accepted");
        }
    }

    #[test]
    fn defaults_apply_without_annotations() {
        let p = plan(&ann(json!({CONFIG: "sy"})), &Defaults::default()).unwrap();
        assert_eq!((p.http_port, p.grpc_port, p.metrics_port), (8100, Some(8101), 8102));
        assert_eq!((p.config_key.as_str(), &p.state, p.native_sidecar), ("config.yaml", &State::EmptyDir, true));
        assert_eq!(p.memory_limit.as_deref(), Some(DEFAULT_MEMORY_LIMIT));
        assert_eq!(p.cpu_limit, None);
        assert_eq!(p.address(p.http_port), "0.0.0.0:8100");
    }

    #[test]
    fn an_ipv6_bind_address() {
        let p = plan(&ann(json!({CONFIG: "sy", BIND_ADDRESS: "::"})), &Defaults::default()).unwrap();
        assert_eq!(p.address(8100), "[::]:8100");
        let e = plan(&ann(json!({CONFIG: "sy", BIND_ADDRESS: "any"})), &Defaults::default()).unwrap_err();
        assert!(e[0].starts_with("switchyard.io/bind-address: \"any\" is not an IP address"), "{e:?}");
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let errors = plan(
            &ann(json!({
                HTTP_PORT: "80000", GRPC_PORT: "8102", METRICS_PORT: 8102, CONFIG_KEY: "..data",
                CPU_REQUEST: "2", CPU_LIMIT: "1", MEMORY_LIMIT: "lots", STATE: "Not_A_Claim",
                NATIVE_SIDECAR: "yes", IMAGE: "a b",
            })),
            &Defaults::default(),
        )
        .unwrap_err();
        let all = errors.join("\n");
        for needle in [
            "switchyard.io/config is missing",
            "switchyard.io/http-port: \"80000\" is not a port",
            "switchyard.io/metrics-port: 8102 must be a string",
            "switchyard.io/config-key: \"..data\"",
            "switchyard.io/cpu-request \"2\" is above switchyard.io/cpu-limit \"1\"",
            "switchyard.io/memory-limit: \"lots\"",
            "switchyard.io/state: \"Not_A_Claim\"",
            "switchyard.io/native-sidecar: \"yes\"",
            "switchyard.io/image: \"a b\": contains whitespace",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn ports_must_differ_and_grpc_can_be_off() {
        let e = plan(&ann(json!({CONFIG: "sy", GRPC_PORT: "8100"})), &Defaults::default()).unwrap_err();
        assert!(e[0].contains("port 8100 is also switchyard.io/http-port"), "{e:?}");
        let p = plan(&ann(json!({CONFIG: "sy", GRPC_PORT: "none"})), &Defaults::default()).unwrap();
        assert_eq!(p.grpc_port, None);
        assert_eq!(p.ports(), vec![("sy-http", 8100), ("sy-metrics", 8102)]);
    }

    #[test]
    fn the_command_line_names_a_default_config_map() {
        let d = Defaults { config_map: Some("fallback".into()), ..Defaults::default() };
        assert_eq!(plan(&Map::new(), &d).unwrap().config_map, "fallback");
        assert_eq!(plan(&ann(json!({CONFIG: "mine"})), &d).unwrap().config_map, "mine");
    }

    #[test]
    fn inject_choice() {
        assert_eq!(choice(&ann(json!({INJECT: "enabled"}))), Ok(Choice::Enabled));
        assert_eq!(choice(&ann(json!({INJECT: "disabled"}))), Ok(Choice::Disabled));
        assert_eq!(choice(&Map::new()), Ok(Choice::Unset));
        assert!(choice(&ann(json!({INJECT: "true"}))).unwrap_err().contains("neither"));
    }
}
