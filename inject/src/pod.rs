//! The one injection code path: adds the Switchyard sidecar to a pod (or a
//! workload's pod template) given as JSON, or says why it will not. Both
//! `switchyard inject` and the admission webhook call [`inject`].

use serde_json::{json, Map, Value};

use crate::annotations::{self, Choice, Defaults, Plan, State};

/// The sidecar container's name.
pub const CONTAINER: &str = "switchyard";
/// The ConfigMap volume, mounted as a directory so the kubelet's `..data` swaps are seen.
pub const CONFIG_VOLUME: &str = "switchyard-config";
pub const STATE_VOLUME: &str = "switchyard-state";
pub const CONFIG_DIR: &str = "/etc/switchyard";
pub const STATE_DIR: &str = "/var/lib/switchyard";
pub const STATE_FILE: &str = "/var/lib/switchyard/state.json";
/// Switchyard's drain after SIGTERM is 1 s of grace plus up to 10 s of in-flight
/// work; 30 s (Kubernetes' own default) leaves room for the model server beside it.
pub const MIN_GRACE_SECONDS: u64 = 30;
/// The non-root user the sidecar runs as (distroless' `nonroot`).
pub const RUN_AS_USER: u64 = 65532;

/// What [`inject`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added; `notes` says what else changed (a raised grace period).
    Injected { notes: Vec<String> },
    /// Injected before (by this tool): left unchanged.
    AlreadyInjected { version: String },
    /// Not to be injected, and why.
    Skipped(String),
}

/// Which pods are injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Only pods annotated `switchyard.io/inject: enabled` (the webhook's `/inject`).
    OptIn,
    /// Every pod not annotated `switchyard.io/inject: disabled` (`switchyard inject`,
    /// the webhook's `/inject-namespace`).
    OptOut,
}

/// Why a pod was not injected when it asked to be: every reason found.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal(pub Vec<String>);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// Injects into `pod`, a Pod or a PodTemplateSpec (`metadata` + `spec`).
///
/// `inherited` holds annotations from the objects around the template (a
/// Deployment's own metadata); the template's annotations win over them.
/// `claim_templates` names the StatefulSet's `volumeClaimTemplates`, which are
/// pod volumes the template does not list.
pub fn inject(
    pod: &mut Value,
    inherited: &Map<String, Value>,
    claim_templates: &[String],
    defaults: &Defaults,
    policy: Policy,
) -> Result<Outcome, Refusal> {
    let own = pod.pointer("/metadata/annotations").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut effective = inherited.clone();
    effective.extend(own.clone());

    match annotations::choice(&effective).map_err(|e| Refusal(vec![e]))? {
        Choice::Disabled => return Ok(Outcome::Skipped(format!("{}: disabled", annotations::INJECT))),
        Choice::Unset if policy == Policy::OptIn => {
            return Ok(Outcome::Skipped(format!("not annotated {}: enabled", annotations::INJECT)))
        }
        _ => {}
    }
    let Some(spec) = pod.get("spec").and_then(Value::as_object) else {
        return Err(Refusal(vec!["the pod has no spec".into()]));
    };

    let ours = find_container(spec, CONTAINER);
    match (own.get(annotations::INJECTED), ours) {
        (Some(v), Some(_)) => {
            return Ok(Outcome::AlreadyInjected { version: v.as_str().unwrap_or_default().to_string() });
        }
        (None, Some(list)) => {
            return Err(Refusal(vec![format!(
                "the pod already has a container named `{CONTAINER}` (in {list}) that switchyard did not inject \
                 (no {} annotation); remove it, or rename it",
                annotations::INJECTED
            )]))
        }
        _ => {}
    }

    let plan = annotations::plan(&effective, defaults).map_err(Refusal)?;
    let mut reasons = clashes(spec, &plan, claim_templates);
    // A claim the pod already mounts as a volume (a StatefulSet's claim template, or
    // a volume the user declared) is mounted as it is; otherwise the state volume is added.
    let existing_state = match &plan.state {
        State::Claim(name) if has_volume(spec, name) || claim_templates.contains(name) => Some(name.clone()),
        _ => None,
    };
    let mut added = vec![CONFIG_VOLUME];
    if existing_state.is_none() {
        added.push(STATE_VOLUME);
    }
    for v in added {
        if has_volume(spec, v) {
            reasons.push(format!("the pod already has a volume named `{v}`, which Switchyard's sidecar needs"));
        }
    }
    if !reasons.is_empty() {
        return Err(Refusal(reasons));
    }

    let mut notes = Vec::new();
    let spec = pod["spec"].as_object_mut().expect("checked above");
    let state_volume = match existing_state {
        Some(name) => name,
        None => {
            let state = match &plan.state {
                State::EmptyDir => json!({"name": STATE_VOLUME, "emptyDir": {}}),
                State::Claim(claim) => {
                    json!({"name": STATE_VOLUME, "persistentVolumeClaim": {"claimName": claim}})
                }
            };
            push(spec, "volumes", state);
            STATE_VOLUME.to_string()
        }
    };
    push(spec, "volumes", json!({"name": CONFIG_VOLUME, "configMap": {"name": plan.config_map, "optional": false}}));
    let container = container(&plan, &state_volume);
    if plan.native_sidecar {
        push(spec, "initContainers", container);
    } else {
        push(spec, "containers", container);
    }
    match spec.get("terminationGracePeriodSeconds").and_then(Value::as_u64) {
        Some(g) if g < MIN_GRACE_SECONDS => {
            spec.insert("terminationGracePeriodSeconds".into(), json!(MIN_GRACE_SECONDS));
            notes.push(format!(
                "terminationGracePeriodSeconds raised from {g} to {MIN_GRACE_SECONDS} (Switchyard drains for up to 11 s)"
            ));
        }
        _ => {}
    }

    let meta =
        pod.as_object_mut().expect("a pod with a spec is an object").entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let anns = meta.as_object_mut().expect("set above").entry("annotations").or_insert_with(|| json!({}));
    if !anns.is_object() {
        *anns = json!({});
    }
    anns.as_object_mut().expect("set above").insert(annotations::INJECTED.into(), json!(env!("CARGO_PKG_VERSION")));
    Ok(Outcome::Injected { notes })
}

/// The sidecar container.
pub fn container(plan: &Plan, state_volume: &str) -> Value {
    let mut args = vec![
        "serve".to_string(),
        "--config".into(),
        format!("{CONFIG_DIR}/{}", plan.config_key),
        "--state-file".into(),
        STATE_FILE.into(),
        "--http-address".into(),
        plan.address(plan.http_port),
    ];
    match plan.grpc_port {
        Some(g) => args.extend(["--grpc-address".into(), plan.address(g)]),
        // The config's own gRPC address (0.0.0.0:8001 by default) would clash with Triton's.
        None => args.push("--no-grpc".into()),
    }
    args.extend(["--metrics-address".into(), plan.address(plan.metrics_port)]);
    let ports: Vec<Value> = plan
        .ports()
        .into_iter()
        .map(|(name, p)| json!({"name": name, "containerPort": p, "protocol": "TCP"}))
        .collect();
    let mut requests = json!({"cpu": plan.cpu_request, "memory": plan.memory_request});
    let mut limits = Map::new();
    if let Some(c) = &plan.cpu_limit {
        limits.insert("cpu".into(), json!(c));
    }
    if let Some(m) = &plan.memory_limit {
        limits.insert("memory".into(), json!(m));
    }
    let mut resources = json!({});
    resources["requests"] = requests.take();
    if !limits.is_empty() {
        resources["limits"] = Value::Object(limits);
    }
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": "sy-http"},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        })
    };
    let mut c = json!({
        "name": CONTAINER,
        "image": plan.image,
        "args": args,
        "ports": ports,
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": true},
            {"name": state_volume, "mountPath": STATE_DIR},
        ],
        "resources": resources,
        // The embedded runtime may take tens of seconds to load its models before the
        // listener starts: /startup gets up to 5 minutes; liveness starts only after it.
        "startupProbe": probe("/startup", 2, 150),
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/health", 10, 3),
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if plan.native_sidecar {
        // A native sidecar (Kubernetes 1.29+): started before the app containers,
        // stopped after them, and a Job still completes when its main container does.
        c["restartPolicy"] = json!("Always");
    }
    c
}

/// Every way the pod's ports, containers and volumes clash with the plan.
fn clashes(spec: &Map<String, Value>, plan: &Plan, claim_templates: &[String]) -> Vec<String> {
    let mut reasons = Vec::new();
    for (list, c) in containers(spec) {
        let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
        if let Some(image) = c.get("image").and_then(Value::as_str) {
            if is_switchyard_image(image) {
                reasons.push(format!(
                    "{list} `{name}` already runs Switchyard (image {image}); the pod needs no second one"
                ));
            }
        }
        for p in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
            for field in ["containerPort", "hostPort"] {
                let Some(n) = p.get(field).and_then(Value::as_u64) else { continue };
                if let Some((pname, _)) = plan.ports().into_iter().find(|(_, ours)| u64::from(*ours) == n) {
                    let key = match pname {
                        "sy-http" => annotations::HTTP_PORT,
                        "sy-grpc" => annotations::GRPC_PORT,
                        _ => annotations::METRICS_PORT,
                    };
                    reasons.push(format!(
                        "{list} `{name}` uses port {n} ({field}), which is Switchyard's {pname} port: \
                         set {key} to a free port"
                    ));
                }
            }
            if let Some(pn) = p.get("name").and_then(Value::as_str) {
                if plan.ports().iter().any(|(ours, _)| *ours == pn) {
                    reasons.push(format!("{list} `{name}` has a port named `{pn}`, a name Switchyard's ports use"));
                }
            }
        }
    }
    if let State::Claim(claim) = &plan.state {
        // A volume of that name that is not a claim would be mounted as if it were the state volume.
        if let Some(v) = volume(spec, claim) {
            if v.get("persistentVolumeClaim").is_none() && !claim_templates.contains(claim) {
                reasons
                    .push(format!("{}: the pod's volume `{claim}` is not a PersistentVolumeClaim", annotations::STATE));
            }
        }
    }
    reasons
}

/// A Switchyard image: its repository's last path component is `switchyard`.
fn is_switchyard_image(image: &str) -> bool {
    let repo = image.split('@').next().unwrap_or(image);
    let last = repo.rsplit('/').next().unwrap_or(repo);
    last.split(':').next() == Some("switchyard")
}

/// Every container of the pod, with the list it is in.
fn containers(spec: &Map<String, Value>) -> impl Iterator<Item = (&'static str, &Map<String, Value>)> {
    [("containers", "container"), ("initContainers", "init container"), ("ephemeralContainers", "ephemeral container")]
        .into_iter()
        .flat_map(move |(field, label)| {
            spec.get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(move |c| Some((label, c.as_object()?)))
        })
}

fn find_container(spec: &Map<String, Value>, name: &str) -> Option<&'static str> {
    containers(spec).find(|(_, c)| c.get("name").and_then(Value::as_str) == Some(name)).map(|(list, _)| list)
}

fn volume<'a>(spec: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    spec.get("volumes")?.as_array()?.iter().find(|v| v.get("name").and_then(Value::as_str) == Some(name))
}

fn has_volume(spec: &Map<String, Value>, name: &str) -> bool {
    volume(spec, name).is_some()
}

fn push(spec: &mut Map<String, Value>, field: &str, v: Value) {
    let list = spec.entry(field).or_insert_with(|| json!([]));
    if !list.is_array() {
        // `null` (an empty `initContainers:` in YAML) reads as no list.
        *list = json!([]);
    }
    list.as_array_mut().expect("set above").push(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: Value, containers: Value) -> Value {
        json!({"metadata": {"name": "p", "annotations": annotations}, "spec": {"containers": containers}})
    }

    fn triton() -> Value {
        json!([{"name": "triton", "image": "nvcr.io/nvidia/tritonserver:24.05-py3",
                "ports": [{"containerPort": 8000}, {"containerPort": 8001}, {"containerPort": 8002}]}])
    }

    fn run(p: &mut Value, policy: Policy) -> Result<Outcome, Refusal> {
        inject(p, &Map::new(), &[], &Defaults::default(), policy)
    }

    #[test]
    fn injects_a_native_sidecar_with_its_volumes() {
        let mut p = pod(json!({"switchyard.io/config": "sy"}), triton());
        assert_eq!(run(&mut p, Policy::OptOut), Ok(Outcome::Injected { notes: vec![] }));
        let init = &p["spec"]["initContainers"][0];
        assert_eq!(init["name"], "switchyard");
        assert_eq!(init["restartPolicy"], "Always");
        assert_eq!(init["args"][2], "/etc/switchyard/config.yaml");
        assert_eq!(p["spec"]["volumes"][1]["configMap"]["name"], "sy");
        assert_eq!(p["spec"]["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(p["metadata"]["annotations"]["switchyard.io/injected"], env!("CARGO_PKG_VERSION"));
        assert_eq!(p["spec"]["containers"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_second_injection_changes_nothing() {
        let mut p = pod(json!({"switchyard.io/config": "sy"}), triton());
        run(&mut p, Policy::OptOut).unwrap();
        let once = p.clone();
        assert!(matches!(run(&mut p, Policy::OptOut), Ok(Outcome::AlreadyInjected { .. })));
        assert_eq!(p, once);
    }

    #[test]
    fn opt_in_skips_unannotated_pods_and_disabled_always_skips() {
        let mut p = pod(json!({"switchyard.io/config": "sy"}), triton());
        assert!(matches!(run(&mut p, Policy::OptIn), Ok(Outcome::Skipped(_))));
        let mut p = pod(json!({"switchyard.io/config": "sy", "switchyard.io/inject": "disabled"}), triton());
        assert!(matches!(run(&mut p, Policy::OptOut), Ok(Outcome::Skipped(_))));
        assert!(p["spec"].get("initContainers").is_none());
    }

    #[test]
    fn refusals_say_why() {
        let cases = [
            (pod(json!({}), triton()), "switchyard.io/config is missing"),
            (
                pod(json!({"switchyard.io/config": "sy"}), json!([{"name": "switchyard", "image": "x"}])),
                "already has a container named `switchyard`",
            ),
            (
                pod(
                    json!({"switchyard.io/config": "sy"}),
                    json!([{"name": "gw", "image": "reg.io/team/switchyard:1.0"}]),
                ),
                "already runs Switchyard",
            ),
            (
                pod(json!({"switchyard.io/config": "sy"}), json!([{"name": "m", "ports": [{"containerPort": 8100}]}])),
                "uses port 8100 (containerPort), which is Switchyard's sy-http port: set switchyard.io/http-port",
            ),
            (
                pod(
                    json!({"switchyard.io/config": "sy"}),
                    json!([{"name": "m", "ports": [{"containerPort": 1, "hostPort": 8102}]}]),
                ),
                "uses port 8102 (hostPort)",
            ),
            (
                pod(json!({"switchyard.io/config": "sy", "switchyard.io/http-port": "8000"}), triton()),
                "container `triton` uses port 8000",
            ),
        ];
        for (mut p, needle) in cases {
            let before = p.clone();
            let e = run(&mut p, Policy::OptOut).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
            assert_eq!(p, before, "a refused pod is left as it was");
        }
    }

    #[test]
    fn a_short_grace_period_is_raised() {
        let mut p = pod(json!({"switchyard.io/config": "sy"}), triton());
        p["spec"]["terminationGracePeriodSeconds"] = json!(5);
        let Ok(Outcome::Injected { notes }) = run(&mut p, Policy::OptOut) else { panic!() };
        assert!(notes[0].contains("raised from 5 to 30"), "{notes:?}");
        assert_eq!(p["spec"]["terminationGracePeriodSeconds"], 30);
        p["spec"]["terminationGracePeriodSeconds"] = json!(120);
    }

    #[test]
    fn a_claim_template_or_pvc_volume_is_mounted_as_state() {
        let mut p = pod(json!({"switchyard.io/config": "sy", "switchyard.io/state": "sy-state"}), triton());
        run(&mut p, Policy::OptOut).unwrap();
        assert_eq!(p["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], "sy-state");
        let mut p = pod(json!({"switchyard.io/config": "sy", "switchyard.io/state": "data"}), triton());
        inject(&mut p, &Map::new(), &["data".into()], &Defaults::default(), Policy::OptOut).unwrap();
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1, "{}", p["spec"]["volumes"]);
        assert_eq!(p["spec"]["initContainers"][0]["volumeMounts"][1]["name"], "data");
    }

    #[test]
    fn a_plain_container_when_native_sidecars_are_off() {
        let mut p = pod(json!({"switchyard.io/config": "sy", "switchyard.io/native-sidecar": "false"}), triton());
        run(&mut p, Policy::OptOut).unwrap();
        assert_eq!(p["spec"]["containers"][1]["name"], "switchyard");
        assert!(p["spec"]["containers"][1].get("restartPolicy").is_none());
    }

    #[test]
    fn switchyard_images() {
        assert!(is_switchyard_image("switchyard"));
        assert!(is_switchyard_image("ghcr.io/acme/switchyard:0.1@sha256:abc"));
        assert!(is_switchyard_image("localhost:5000/switchyard"));
        assert!(!is_switchyard_image("ghcr.io/acme/switchyard-ui:1"));
        assert!(!is_switchyard_image("switchyard.io/other:1"));
    }
}
