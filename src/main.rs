//! The `switchyard` binary: CLI, logging, and the wiring of control plane,
//! backends and data plane. Everything else lives in the workspace crates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use switchyard_config::{LogFormat, ValidatedConfig};
use switchyard_control::{ConfigFile, ControlPlane};
use switchyard_proxy::Metrics;

mod plane;
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
    },
    /// Check a config file: exit 0 with a summary, or 1 with every error.
    Validate { file: PathBuf },
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

fn serve(config: PathBuf, log_format: Option<Format>) -> anyhow::Result<()> {
    // Read and validated once: logging and listeners come from it, and the
    // control plane starts on the same value (it owns the file from here on).
    let file = ConfigFile::read(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = file.config.clone();
    let format = match log_format {
        Some(Format::Json) => LogFormat::Json,
        Some(Format::Text) => LogFormat::Text,
        None => cfg.logging.format,
    };
    init_logging(format, &cfg.logging.level);

    // The control plane, backends (repository watching, batch schedulers) and
    // the control API run on a background runtime; pingora runs the data plane
    // on runtimes of its own.
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("switchyard-bg")
        .enable_all()
        .build()
        .context("starting the background runtime")?;
    let metrics = Metrics::new_unregistered();
    // Redis connections are driven by the background runtime: the cache is made inside it.
    let cache = {
        let _rt = background.enter();
        switchyard_proxy::cache::ResponseCache::new(&cfg.cache, &metrics.registry).map_err(|e| anyhow::anyhow!(e))?
    };
    let plane = Arc::new(Plane::new(metrics).with_cache(cache));
    let control = background.block_on(ControlPlane::start(file, plane.clone())).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(c) = &cfg.listeners.control {
        let token =
            std::env::var(switchyard_control::api::TOKEN_ENV).ok().filter(|t| !t.is_empty()).or(c.token.clone());
        background
            .block_on(switchyard_control::api::serve(control.clone(), c.address, token))
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    {
        let _rt = background.enter();
        switchyard_control::watch::spawn(control.clone()).map_err(|e| anyhow::anyhow!(e))?;
        switchyard_control::fleet::tasks::spawn(control.clone());
        switchyard_control::clock::spawn(control);
    }
    let (table, metrics) = (plane.table.clone(), plane.metrics.clone());

    // gRPC is served by tonic on a runtime of its own, beside pingora's.
    let _grpc = match &cfg.listeners.grpc {
        Some(g) => Some(
            switchyard_proxy::grpc::serve(g, cfg.listeners.http.threads.get(), table.clone(), metrics.clone())
                .context("starting the gRPC listener (set listeners.grpc.enabled: false to turn it off)")?,
        ),
        None => None,
    };

    // `run` never returns; the background runtime lives as long as the process.
    let _background = background;
    switchyard_proxy::run(&cfg, table, metrics)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Serve { config, log_format } => match serve(config, log_format) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
