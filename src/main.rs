//! The `switchyard` binary: CLI, logging, and the wiring of control plane,
//! backends and data plane. Everything else lives in the workspace crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use switchyard_config::{LogFormat, Overrides, ValidatedConfig};
use switchyard_control::{ConfigFile, ControlPlane};
use switchyard_proxy::Metrics;

mod plane;
mod profile;
use plane::Plane;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A data plane for model serving: routes, batches, caches and A/B-splits inference requests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given config file.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
        /// Log format (overrides the config's `logging.format`).
        #[arg(long, env = "SWITCHYARD_LOG_FORMAT")]
        log_format: Option<Format>,
        #[command(flatten)]
        overrides: OverrideArgs,
        /// Take the listening sockets over from the running process (zero-downtime
        /// upgrade): start this, then send the old process SIGQUIT.
        #[arg(long)]
        upgrade: bool,
    },
    /// Check a config file: exit 0 with a summary, or 1 with every error.
    Validate { file: PathBuf },
    /// Build a drift reference profile from sample inputs (docs/monitoring.md).
    Profile(profile::ProfileArgs),
    /// Add the Switchyard sidecar to Kubernetes manifests (files or stdin) and print them.
    Inject(switchyard_inject::InjectArgs),
    /// Serve the sidecar-injecting mutating admission webhook over HTTPS.
    Injector(switchyard_inject::InjectorArgs),
    /// Print a signed JWT for trying auth out (or, with --jwks, the JWKS that verifies it).
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// PKCS#8 PEM private key: Ed25519 (EdDSA), P-256 (ES256) or RSA (RS256).
    #[arg(long)]
    key: PathBuf,
    /// The principal (`sub` claim).
    #[arg(long, required_unless_present = "jwks")]
    sub: Option<String>,
    /// Permissions, comma-separated (`model:mlp:infer,override`).
    #[arg(long, value_delimiter = ',')]
    allow: Vec<String>,
    /// Lifetime (`exp` = now + ttl): 30s, 15m, 12h.
    #[arg(long, default_value = "1h")]
    ttl: String,
    #[arg(long)]
    iss: Option<String>,
    #[arg(long)]
    aud: Option<String>,
    /// Key id put in the token's header (and in the printed JWKS).
    #[arg(long)]
    kid: Option<String>,
    /// The claim that carries the permissions.
    #[arg(long, default_value = switchyard_config::DEFAULT_PERMISSIONS_CLAIM)]
    claim: String,
    /// Admission priority of the principal (1 is the highest), in the `priority` claim.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    priority: Option<u64>,
    /// Print the key's public JWKS instead of a token.
    #[arg(long)]
    jwks: bool,
}

fn token(a: TokenArgs) -> anyhow::Result<()> {
    use switchyard_proxy::auth::jwt::SigningKey;
    let pem = std::fs::read_to_string(&a.key).with_context(|| format!("reading {}", a.key.display()))?;
    let key = SigningKey::from_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", a.key.display()))?;
    if a.jwks {
        println!("{}", serde_json::json!({ "keys": [key.public_jwk(a.kid.as_deref())] }));
        return Ok(());
    }
    for p in &a.allow {
        switchyard_config::check_permission(p).map_err(|e| anyhow::anyhow!("--allow: {e}"))?;
    }
    let ttl = switchyard_config::parse_duration(&a.ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let mut claims = serde_json::json!({
        "sub": a.sub,
        "iat": now,
        "exp": now + ttl.as_secs(),
        a.claim: a.allow,
    });
    if let Some(iss) = a.iss {
        claims["iss"] = iss.into();
    }
    if let Some(aud) = a.aud {
        claims["aud"] = aud.into();
    }
    if let Some(p) = a.priority {
        claims[switchyard_config::DEFAULT_PRIORITY_CLAIM] = p.into();
    }
    println!("{}", key.sign(&claims, a.kid.as_deref()).map_err(|e| anyhow::anyhow!(e))?);
    Ok(())
}

/// Settings that replace the config file's, at start and on every reload
/// (a sidecar's ports come from its pod spec, its config from a shared ConfigMap).
#[derive(clap::Args)]
struct OverrideArgs {
    /// Where API changes persist (replaces `listeners.control.state_file`;
    /// default `<config>.state.json`, which a read-only ConfigMap mount cannot hold).
    #[arg(long, env = "SWITCHYARD_STATE_FILE")]
    state_file: Option<PathBuf>,
    /// Data-plane HTTP address (replaces `listeners.http.address`).
    #[arg(long, env = "SWITCHYARD_HTTP_ADDRESS")]
    http_address: Option<SocketAddr>,
    /// gRPC address (replaces `listeners.grpc.address`; a config with gRPC off keeps it off).
    #[arg(long, env = "SWITCHYARD_GRPC_ADDRESS")]
    grpc_address: Option<SocketAddr>,
    /// No gRPC listener, whatever the file says (an injected sidecar whose pod has no gRPC port for it).
    #[arg(long, env = "SWITCHYARD_NO_GRPC", conflicts_with = "grpc_address")]
    no_grpc: bool,
    /// Metrics address (replaces `listeners.metrics.address`).
    #[arg(long, env = "SWITCHYARD_METRICS_ADDRESS")]
    metrics_address: Option<SocketAddr>,
}

impl OverrideArgs {
    fn into_overrides(self) -> Overrides {
        Overrides {
            http_address: self.http_address,
            grpc_address: self.grpc_address,
            no_grpc: self.no_grpc,
            metrics_address: self.metrics_address,
            state_file: self.state_file,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},pingora_core=warn,pingora_proxy=warn,ort=warn"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn validate(file: &std::path::Path) -> ExitCode {
    match ValidatedConfig::load(file) {
        Ok(cfg) => {
            println!("{}: ok: {}", file.display(), cfg.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: PathBuf, log_format: Option<Format>, overrides: Overrides, upgrade: bool) -> anyhow::Result<()> {
    // Read and validated once: logging and listeners come from it, and the
    // control plane starts on the same value (it owns the file from here on).
    let file = ConfigFile::read_with(&config, Arc::new(overrides)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = file.config.clone();
    let format = match log_format {
        Some(Format::Json) => LogFormat::Json,
        Some(Format::Text) => LogFormat::Text,
        None => cfg.logging.format,
    };
    init_logging(format, &cfg.logging.level);
    let a = &cfg.access_log;
    switchyard_stats::access_log::init(a.enabled, &a.path, a.sample, a.queue.get(), a.flush_interval)
        .with_context(|| format!("opening access_log.path {}", a.path))?;
    // Key files are read now: a missing JWKS fails start-up, not the first request.
    let auth = match &cfg.auth {
        Some(a) => {
            let auth = switchyard_proxy::auth::Auth::new(a).map_err(|e| anyhow::anyhow!("auth: {e}"))?;
            auth.spawn_refresh();
            Some(auth)
        }
        None => None,
    };

    // The control plane, backends (repository watching, batch schedulers) and
    // the control API run on a background runtime; pingora runs the data plane
    // on runtimes of its own. Two threads, or one where the process may use one CPU.
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(switchyard_config::cpus::available_cpus().min(2))
        .thread_name("switchyard-bg")
        .enable_all()
        .build()
        .context("starting the background runtime")?;
    let metrics = Metrics::new_unregistered();
    // The cache's shared Redis connection (used off the request path, and by a
    // serving thread until its own is made on its runtime) is driven by the
    // background runtime: the cache is made inside it.
    let cache = {
        let _rt = background.enter();
        switchyard_proxy::cache::ResponseCache::new(&cfg.cache, &metrics.registry).map_err(|e| anyhow::anyhow!(e))?
    };
    // Spans are exported from the background runtime (restart to change `tracing:`).
    let tracer = match &cfg.tracing {
        Some(t) => {
            let _rt = background.enter();
            Some(switchyard_proxy::trace::Tracer::start(t.clone(), &metrics.registry).map_err(|e| anyhow::anyhow!(e))?)
        }
        None => None,
    };
    let plane = {
        // The answer store's Redis connection and writer run on the background runtime.
        let _rt = background.enter();
        Arc::new(
            Plane::new(metrics).with_cache(cache).with_tracer(tracer).with_fleet_answers(cfg.control.fleet.as_ref())?,
        )
    };
    let control = background.block_on(ControlPlane::start(file, plane.clone())).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(c) = &cfg.listeners.control {
        let token =
            std::env::var(switchyard_control::api::TOKEN_ENV).ok().filter(|t| !t.is_empty()).or(c.token.clone());
        // With `auth:`, a principal holding `control` may call the control API too.
        let verifier = auth.clone().map(|auth| {
            Arc::new(move |h: &http::HeaderMap, admin_of: Option<&str>| {
                let p = auth.authenticate(h).map_err(|e| e.message)?;
                p.require("control", "call the control API").map_err(|e| e.message)?;
                if let Some(model) = admin_of {
                    switchyard_proxy::pipeline::authorize(
                        Some(&*p),
                        model,
                        None,
                        switchyard_proxy::auth::Action::Admin,
                    )
                    .map_err(|e| e.message)?;
                }
                Ok(p.name.to_string())
            }) as switchyard_control::api::Verifier
        });
        let control_auth = switchyard_control::api::ControlAuth { token, verifier };
        // HTTPS on the control API: the files are watched for as long as the config lives.
        let control_tls = c
            .tls
            .as_ref()
            .map(|t| switchyard_proxy::tls::ServerTls::load(t, "listeners.control")?.rustls_config(&[b"http/1.1"]))
            .transpose()
            .map_err(|e| anyhow::anyhow!(e))?;
        if upgrade {
            // The old process holds the control port until it has drained; take it then.
            let (control, address) = (control.clone(), c.address);
            background.spawn(async move {
                let mut logged = false;
                loop {
                    match switchyard_control::api::serve(
                        control.clone(),
                        address,
                        control_auth.clone(),
                        control_tls.clone(),
                    )
                    .await
                    {
                        Ok(_) => break,
                        Err(e) => {
                            if !logged {
                                tracing::info!(error = %e, "control API waits for the old process to release its port");
                                logged = true;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        }
                    }
                }
            });
        } else {
            background
                .block_on(switchyard_control::api::serve(control.clone(), c.address, control_auth, control_tls))
                .map_err(|e| anyhow::anyhow!(e))?;
        }
    }
    {
        let _rt = background.enter();
        switchyard_control::watch::spawn(control.clone()).map_err(|e| anyhow::anyhow!(e))?;
        switchyard_control::fleet::tasks::spawn(control.clone());
        switchyard_control::clock::spawn(control);
    }
    let (table, metrics) = (plane.table.clone(), plane.metrics.clone());
    // Fleet-wide buckets connect to Redis from the background runtime, never on a request.
    let limiter = {
        let _rt = background.enter();
        switchyard_proxy::ratelimit::RateLimiter::new(&cfg.rate_limits, &metrics.registry)
            .map_err(|e| anyhow::anyhow!(e))?
            .map(Arc::new)
    };
    let guards = switchyard_proxy::Guards { auth, limiter, body_hash: cfg.access_log.body_hash };

    // gRPC is served by tonic, as one of pingora's services.
    let grpc = match &cfg.listeners.grpc {
        Some(g) => Some(
            switchyard_proxy::grpc::GrpcService::new(
                g,
                cfg.listeners.http.threads.get(),
                table.clone(),
                metrics.clone(),
                guards.clone(),
                upgrade,
            )
            .context("starting the gRPC listener (set listeners.grpc.enabled: false to turn it off)")?,
        ),
        None => None,
    };

    // `run` never returns; the background runtime lives as long as the process.
    let _background = background;
    switchyard_proxy::run(&cfg, table, metrics, guards, grpc, upgrade)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Profile(args) => match profile::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard profile: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Token(args) => match token(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard token: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Inject(args) => switchyard_inject::cli::inject(args),
        Command::Injector(args) => {
            init_logging(if args.json_logs() { LogFormat::Json } else { LogFormat::Text }, "info");
            switchyard_inject::cli::injector(args)
        }
        Command::Serve { config, log_format, overrides, upgrade } => {
            match serve(config, log_format, overrides.into_overrides(), upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
