//! `switchyard inject` over Kubernetes manifests: multi-document YAML in,
//! the same documents out (in the same order, other kinds unchanged) with
//! every pod template injected through [`crate::pod::inject`], plus a line
//! per workload saying what happened, and the optional Service retargeting.

use serde_json::{Map, Value};

use crate::annotations::{self, Defaults};
use crate::pod::{self, Outcome, Policy};

/// What happened to each object, for the summary on stderr.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per workload or retargeted Service.
    pub lines: Vec<String>,
    /// Workloads that asked for injection and were refused; any makes the run fail.
    pub refusals: Vec<String>,
}

/// A workload injected now or before: what a Service selecting it may be retargeted to.
struct Injected {
    namespace: Option<String>,
    labels: Map<String, Value>,
    /// The model server's HTTP and gRPC ports (Switchyard's gRPC may be off).
    server_http: u16,
    server_grpc: Option<u16>,
    /// The app containers' named ports, so a Service's named `targetPort` resolves.
    named_ports: Vec<(String, u16)>,
}

/// Parses multi-document YAML into its documents (empty documents dropped).
pub fn parse(input: &str) -> Result<Vec<Value>, String> {
    serde_saphyr::from_multiple::<Value>(input).map_err(|e| e.to_string())
}

/// Renders documents as multi-document YAML. Keys come out sorted (as `kubectl get -o yaml`
/// prints them) and comments are not kept.
pub fn render(docs: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let text = serde_saphyr::to_string(d).map_err(|e| e.to_string())?;
        out.push_str(&text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// Injects every workload in `docs` (a `kind: List`'s items too), then retargets
/// the Services that ask for it.
pub fn inject_all(docs: &mut [Value], defaults: &Defaults) -> Report {
    let mut report = Report::default();
    let mut injected = Vec::new();
    for d in docs.iter_mut() {
        visit(d, &mut |obj| inject_object(obj, defaults, &mut report, &mut injected));
    }
    for d in docs.iter_mut() {
        visit(d, &mut |obj| retarget(obj, &injected, &mut report));
    }
    report
}

/// Calls `f` on the object and, for a `kind: List`, on each item.
fn visit(doc: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    if doc.get("kind").and_then(Value::as_str) == Some("List") {
        if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                visit(item, f);
            }
        }
        return;
    }
    f(doc);
}

/// `deployment/web` (with its namespace when set), for messages.
fn label(obj: &Value) -> String {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("object").to_lowercase();
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name").and_then(Value::as_str))
        .map(str::to_string)
        .or_else(|| meta.and_then(|m| m.get("generateName")?.as_str()).map(|g| format!("{g}*")))
        .unwrap_or_else(|| "(unnamed)".into());
    match meta.and_then(|m| m.get("namespace")?.as_str()) {
        Some(ns) => format!("{kind}/{name} (namespace {ns})"),
        None => format!("{kind}/{name}"),
    }
}

fn annotations_of(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(|m| m.get("annotations")).and_then(Value::as_object).cloned().unwrap_or_default()
}

fn inject_object(obj: &mut Value, defaults: &Defaults, report: &mut Report, injected: &mut Vec<Injected>) {
    let Some(kind) = obj.get("kind").and_then(Value::as_str).map(str::to_string) else { return };
    let who = label(obj);
    let mut inherited = annotations_of(obj.get("metadata"));
    let namespace = obj.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
    let claim_templates: Vec<String> = obj
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.pointer("/metadata/name")?.as_str().map(str::to_string))
        .collect();
    let template = match kind.as_str() {
        "Pod" => {
            inherited = Map::new();
            Some(&mut *obj)
        }
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => {
            obj.pointer_mut("/spec/template")
        }
        "CronJob" => {
            inherited.extend(annotations_of(obj.pointer("/spec/jobTemplate/metadata")));
            obj.pointer_mut("/spec/jobTemplate/spec/template")
        }
        _ => return,
    };
    let Some(template) = template else {
        report.refusals.push(format!("{who}: refused: it has no pod template"));
        return;
    };
    match pod::inject(template, &inherited, &claim_templates, defaults, Policy::OptOut) {
        Ok(Outcome::Skipped(why)) => report.lines.push(format!("{who}: skipped ({why})")),
        Ok(outcome) => {
            let mut line = match &outcome {
                Outcome::AlreadyInjected { version } => {
                    format!("{who}: already injected (switchyard.io/injected: {version}), unchanged")
                }
                _ => format!("{who}: injected"),
            };
            if let Outcome::Injected { notes } = &outcome {
                for n in notes {
                    line.push_str(&format!("; {n}"));
                }
                let container_sidecar = template
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .is_some_and(|cs| cs.iter().any(|c| c.get("name").and_then(Value::as_str) == Some(pod::CONTAINER)));
                if container_sidecar && matches!(kind.as_str(), "Job" | "CronJob") {
                    line.push_str(&format!(
                        "; warning: a plain sidecar container keeps the Job's pods running: \
                         leave {} unset for a native sidecar",
                        annotations::NATIVE_SIDECAR
                    ));
                }
            }
            report.lines.push(line);
            let mut effective = inherited.clone();
            effective.extend(annotations_of(template.get("metadata")));
            match server_ports(&effective) {
                Ok((server_http, server_grpc)) => injected.push(Injected {
                    namespace,
                    labels: template
                        .pointer("/metadata/labels")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default(),
                    server_http,
                    server_grpc,
                    named_ports: named_ports(template),
                }),
                Err(e) => report.refusals.push(format!("{who}: refused: {e}")),
            }
        }
        Err(refusal) => report.refusals.push(format!("{who}: refused: {refusal}")),
    }
}

fn server_ports(effective: &Map<String, Value>) -> Result<(u16, Option<u16>), String> {
    let http =
        annotations::port_annotation(effective, annotations::SERVER_HTTP_PORT, annotations::DEFAULT_SERVER_HTTP_PORT)?;
    let grpc_on = effective.get(annotations::GRPC_PORT).and_then(Value::as_str) != Some("none");
    let grpc =
        annotations::port_annotation(effective, annotations::SERVER_GRPC_PORT, annotations::DEFAULT_SERVER_GRPC_PORT)?;
    Ok((http, grpc_on.then_some(grpc)))
}

fn named_ports(template: &Value) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for list in ["containers", "initContainers"] {
        for c in template.pointer(&format!("/spec/{list}")).and_then(Value::as_array).into_iter().flatten() {
            for p in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
                if let (Some(n), Some(port)) = (p.get("name").and_then(Value::as_str), p.get("containerPort")) {
                    if let Some(port) = port.as_u64().and_then(|p| u16::try_from(p).ok()) {
                        out.push((n.to_string(), port));
                    }
                }
            }
        }
    }
    out
}

/// Points a Service annotated `switchyard.io/retarget: enabled` at Switchyard's ports:
/// each port whose target is an injected workload's model-server HTTP (gRPC) port
/// now targets `sy-http` (`sy-grpc`).
fn retarget(obj: &mut Value, injected: &[Injected], report: &mut Report) {
    if obj.get("kind").and_then(Value::as_str) != Some("Service") {
        return;
    }
    let anns = annotations_of(obj.get("metadata"));
    match anns.get(annotations::RETARGET).and_then(Value::as_str) {
        None => return,
        Some("enabled") => {}
        Some(other) => {
            report.refusals.push(format!(
                "{}: refused: {}: {other:?} is not `enabled`",
                label(obj),
                annotations::RETARGET
            ));
            return;
        }
    }
    let who = label(obj);
    let namespace = obj.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
    let selector = obj.pointer("/spec/selector").and_then(Value::as_object).cloned().unwrap_or_default();
    let matches: Vec<&Injected> = injected
        .iter()
        .filter(|w| {
            !selector.is_empty() && w.namespace == namespace && selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
        })
        .collect();
    if matches.is_empty() {
        report.lines.push(format!("{who}: not retargeted: its selector matches no injected workload in the input"));
        return;
    }
    let mut changed = Vec::new();
    for p in obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut).into_iter().flatten() {
        let target = p.get("targetPort").or_else(|| p.get("port")).cloned();
        let to = matches.iter().find_map(|w| {
            let port = match &target {
                Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                Some(Value::String(name)) => w.named_ports.iter().find(|(n, _)| n == name).map(|(_, p)| *p),
                _ => None,
            }?;
            if port == w.server_http {
                Some("sy-http")
            } else if Some(port) == w.server_grpc {
                Some("sy-grpc")
            } else {
                None
            }
        });
        if let (Some(to), Some(target)) = (to, target) {
            let name = p.get("name").and_then(Value::as_str).unwrap_or("(unnamed)").to_string();
            p["targetPort"] = Value::String(to.into());
            changed.push(format!("port {name}: {} -> {to}", plain(&target)));
        }
    }
    if changed.is_empty() {
        let already = obj.pointer("/spec/ports").and_then(Value::as_array).is_some_and(|ps| {
            ps.iter().any(|p| matches!(p.get("targetPort").and_then(Value::as_str), Some("sy-http" | "sy-grpc")))
        });
        report.lines.push(if already {
            format!("{who}: already targets Switchyard, unchanged")
        } else {
            format!("{who}: not retargeted: no port targets the model server's ports")
        });
    } else {
        report.lines.push(format!("{who}: retargeted ({})", changed.join(", ")));
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOY_AND_SERVICE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: triton, namespace: models}
spec:
  selector: {matchLabels: {app: triton}}
  template:
    metadata:
      labels: {app: triton}
      annotations: {switchyard.io/config: sy}
    spec:
      containers:
        - name: triton
          image: nvcr.io/nvidia/tritonserver:24.05-py3
          ports: [{name: http, containerPort: 8000}, {name: grpc, containerPort: 8001}, {containerPort: 8002}]
---
apiVersion: v1
kind: Service
metadata:
  name: triton
  namespace: models
  annotations: {switchyard.io/retarget: enabled}
spec:
  selector: {app: triton}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: grpc, port: 8001}
    - {name: metrics, port: 8002, targetPort: 8002}
"#;

    #[test]
    fn a_service_is_retargeted_to_switchyard_once() {
        let mut docs = parse(DEPLOY_AND_SERVICE).unwrap();
        let r = inject_all(&mut docs, &Defaults::default());
        assert!(r.refusals.is_empty(), "{:?}", r.refusals);
        assert_eq!(r.lines[0], "deployment/triton (namespace models): injected");
        assert_eq!(
            r.lines[1],
            "service/triton (namespace models): retargeted (port http: http -> sy-http, port grpc: 8001 -> sy-grpc)"
        );
        let ports = &docs[1]["spec"]["ports"];
        assert_eq!(
            (ports[0]["targetPort"].as_str(), ports[1]["targetPort"].as_str()),
            (Some("sy-http"), Some("sy-grpc"))
        );
        assert_eq!(ports[2]["targetPort"], 8002, "metrics stay the model server's");

        let once = docs.clone();
        let r = inject_all(&mut docs, &Defaults::default());
        assert_eq!(docs, once);
        assert!(r.lines[1].contains("already targets Switchyard"), "{:?}", r.lines);
    }

    #[test]
    fn lists_are_walked_and_other_kinds_left_alone() {
        let mut docs = parse(
            "kind: List\napiVersion: v1\nitems:\n- {kind: ConfigMap, apiVersion: v1, metadata: {name: sy}, data: {a: b}}\n\
             - {kind: Pod, apiVersion: v1, metadata: {name: p, annotations: {switchyard.io/config: sy}}, spec: {containers: [{name: m, image: m}]}}\n",
        )
        .unwrap();
        let r = inject_all(&mut docs, &Defaults::default());
        assert_eq!(r.lines, vec!["pod/p: injected"]);
        assert_eq!(docs[0]["items"][0]["data"]["a"], "b");
        assert_eq!(docs[0]["items"][1]["spec"]["initContainers"][0]["name"], "switchyard");
    }

    #[test]
    fn refusals_name_the_workload() {
        let mut docs = parse(
            "kind: Deployment\nmetadata: {name: web}\nspec: {template: {spec: {containers: [{name: web, image: nginx}]}}}\n",
        )
        .unwrap();
        let r = inject_all(&mut docs, &Defaults::default());
        assert_eq!(r.refusals.len(), 1);
        assert!(
            r.refusals[0].starts_with("deployment/web: refused: switchyard.io/config is missing"),
            "{:?}",
            r.refusals
        );
    }

    #[test]
    fn workload_annotations_are_inherited_by_the_template() {
        let mut docs = parse(
            "kind: CronJob\nmetadata: {name: nightly, annotations: {switchyard.io/config: sy, switchyard.io/http-port: '9100'}}\n\
             spec: {schedule: '@daily', jobTemplate: {spec: {template: {spec: {restartPolicy: Never, containers: [{name: j, image: j}]}}}}}\n",
        )
        .unwrap();
        let r = inject_all(&mut docs, &Defaults::default());
        assert!(r.refusals.is_empty(), "{:?}", r.refusals);
        let c = &docs[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][0];
        assert_eq!(c["ports"][0]["containerPort"], 9100);
    }

    /// Values YAML 1.1 readers (kubectl's) take for booleans, numbers or null
    /// stay strings; block scalars stay text.
    #[test]
    fn scalars_survive_the_round_trip() {
        let input = "kind: ConfigMap\nmetadata: {name: x}\ndata:\n  a: \"true\"\n  b: \"yes\"\n  c: \"on\"\n  \
                     d: \"null\"\n  e: \"~\"\n  f: \"0o17\"\n  g: \"8080\"\n  h: \"\"\n  i: \"1e3\"\n  j: \"-\"\n  \
                     k: \" lead\"\n  l: \"a: b\"\n  m: \"#x\"\n  y: \"0x1F\"\n  n: \"1.0\"\n  \
                     script: |\n    echo \"hi\": x\n    done\n";
        let docs = parse(input).unwrap();
        let out = render(&docs).unwrap();
        assert_eq!(parse(&out).unwrap(), docs, "{out}");
        for (k, v) in docs[0]["data"].as_object().unwrap() {
            assert!(v.is_string(), "{k}: {v}");
        }
        assert!(out.contains("script: |"), "block scalars stay readable:\n{out}");
    }

    #[test]
    fn bad_yaml_is_an_error_with_a_location() {
        let e = parse("kind: Pod\nmetadata: {name: [\n").unwrap_err();
        assert!(e.contains("line"), "{e}");
    }
}
