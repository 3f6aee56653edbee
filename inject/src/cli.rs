//! The `switchyard inject` and `switchyard injector` subcommands: their
//! arguments (flattened into the binary's CLI) and entry points.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::annotations::{self, Defaults};
use crate::manifest;
use crate::server;

/// The sidecar's defaults; each `switchyard.io/*` annotation overrides its flag.
#[derive(clap::Args, Debug, Clone)]
pub struct SidecarArgs {
    /// Image of the injected container (annotation `switchyard.io/image`).
    #[arg(long, env = "SWITCHYARD_INJECT_IMAGE", default_value = annotations::DEFAULT_IMAGE)]
    pub image: String,
    /// ConfigMap used when a pod names none (annotation `switchyard.io/config`); without
    /// it, a pod lacking the annotation is refused.
    #[arg(long)]
    pub config_map: Option<String>,
    /// CPU request of the sidecar (annotation `switchyard.io/cpu-request`).
    #[arg(long, default_value = annotations::DEFAULT_CPU_REQUEST)]
    pub cpu_request: String,
    /// CPU limit of the sidecar; none by default (annotation `switchyard.io/cpu-limit`).
    #[arg(long)]
    pub cpu_limit: Option<String>,
    /// Memory request of the sidecar (annotation `switchyard.io/memory-request`).
    #[arg(long, default_value = annotations::DEFAULT_MEMORY_REQUEST)]
    pub memory_request: String,
    /// Memory limit of the sidecar, `none` for no limit (annotation `switchyard.io/memory-limit`).
    #[arg(long, default_value = annotations::DEFAULT_MEMORY_LIMIT)]
    pub memory_limit: String,
}

impl SidecarArgs {
    fn defaults(&self) -> Result<Defaults, Vec<String>> {
        let d = Defaults {
            image: self.image.clone(),
            config_map: self.config_map.clone(),
            cpu_request: self.cpu_request.clone(),
            cpu_limit: self.cpu_limit.clone(),
            memory_request: self.memory_request.clone(),
            memory_limit: Some(self.memory_limit.clone()).filter(|m| m != "none"),
        };
        d.check().map(|()| d)
    }
}

/// `switchyard inject`: add the Switchyard sidecar to the workloads in Kubernetes manifests.
#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    /// Manifest files (multi-document YAML); none or `-` reads stdin. The result goes to stdout.
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
}

/// `switchyard injector`: the mutating admission webhook.
#[derive(clap::Args, Debug)]
pub struct InjectorArgs {
    /// Address to serve HTTPS on (port 0: any free port; the bound address is logged).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain (reloaded when it changes on disk).
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// PEM private key (reloaded when it changes on disk).
    #[arg(long)]
    pub tls_key: PathBuf,
    /// Log format.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
}

impl InjectorArgs {
    /// Whether logs are JSON lines.
    pub fn json_logs(&self) -> bool {
        self.log_format == "json"
    }
}

/// Runs `switchyard inject`: nothing is written to stdout when any workload is refused,
/// so a pipe into `kubectl apply` never applies half of the input.
pub fn inject(args: InjectArgs) -> ExitCode {
    let defaults = match args.sidecar.defaults() {
        Ok(d) => d,
        Err(errors) => {
            for e in errors {
                eprintln!("switchyard inject: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let sources = if args.files.is_empty() { vec![PathBuf::from("-")] } else { args.files };
    let mut docs = Vec::new();
    for source in &sources {
        let (name, text) = if source.as_os_str() == "-" {
            let mut s = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut s) {
                eprintln!("switchyard inject: reading stdin: {e}");
                return ExitCode::FAILURE;
            }
            ("<stdin>".to_string(), s)
        } else {
            match std::fs::read_to_string(source) {
                Ok(s) => (source.display().to_string(), s),
                Err(e) => {
                    eprintln!("switchyard inject: {}: {e}", source.display());
                    return ExitCode::FAILURE;
                }
            }
        };
        match manifest::parse(&text) {
            Ok(d) => docs.extend(d),
            Err(e) => {
                eprintln!("switchyard inject: {name}: not valid YAML: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let report = manifest::inject_all(&mut docs, &defaults);
    for line in &report.lines {
        eprintln!("{line}");
    }
    if !report.refusals.is_empty() {
        for r in &report.refusals {
            eprintln!("{r}");
        }
        eprintln!("switchyard inject: {} workload(s) refused; nothing written", report.refusals.len());
        return ExitCode::FAILURE;
    }
    let text = match manifest::render(&docs) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("switchyard inject: cannot write YAML: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        eprintln!("switchyard inject: writing stdout: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Runs `switchyard injector` until SIGTERM or Ctrl-C (logging is set up by the caller).
pub fn injector(args: InjectorArgs) -> ExitCode {
    let defaults = match args.sidecar.defaults() {
        Ok(d) => d,
        Err(errors) => {
            for e in errors {
                eprintln!("switchyard injector: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("switchyard-injector")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard injector: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = server::Config { listen: args.listen, cert: args.tls_cert, key: args.tls_key, defaults };
    match runtime.block_on(server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard injector: {e}");
            ExitCode::FAILURE
        }
    }
}
