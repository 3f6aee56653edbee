//! The `switchyard` binary: CLI, logging, and the wiring of control plane,
//! backends and data plane. Everything else lives in the workspace crates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use switchyard_config::{LogFormat, ValidatedConfig};
use switchyard_control::ConfigSource;
use switchyard_proxy::{Metrics, RoutingTable};

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
        tracing_subscriber::EnvFilter::new(format!("{level},pingora_core=warn,pingora_proxy=warn"))
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
    let source = ConfigSource::new(&config);
    let generation = source.load().map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = generation.config.clone();
    let format = match log_format {
        Some(Format::Json) => LogFormat::Json,
        Some(Format::Text) => LogFormat::Text,
        None => cfg.logging.format,
    };
    init_logging(format, &cfg.logging.level);
    if let Some(control) = &cfg.listeners.control {
        tracing::warn!(address = %control.address, "listeners.control is set, but the control API is not part of this build yet; nothing listens there");
    }

    // Background work (model repository watching, backend probes) runs on its
    // own runtime; pingora runs the data plane on runtimes of its own.
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("switchyard-bg")
        .enable_all()
        .build()
        .context("starting the background runtime")?;
    let backends =
        background.block_on(switchyard_runtime::backend::build_backends(&cfg)).map_err(|e| anyhow::anyhow!(e))?;

    let metrics = Metrics::new_unregistered();
    let table = {
        // Batch schedulers live on the background runtime.
        let _rt = background.enter();
        RoutingTable::build(&cfg, &backends, &metrics, generation.number).map_err(|e| anyhow::anyhow!(e))?
    };
    metrics.config_generation.set(generation.number as i64);
    metrics.config_last_reload_successful.set(1);
    let table = Arc::new(arc_swap::ArcSwap::from_pointee(table));

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
