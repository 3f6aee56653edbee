//! Switchyard's control plane: loads the config and publishes generations of
//! it. Hot reload, the control API, traffic shifts and rollback build on this
//! (see docs/ARCHITECTURE.md for what is built today).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use switchyard_config::{ConfigError, ValidatedConfig};

/// A validated config with the generation number it was published as.
#[derive(Debug, Clone)]
pub struct Generation {
    pub number: u64,
    pub config: Arc<ValidatedConfig>,
}

/// The source of truth for configuration: a file, validated whole before use.
pub struct ConfigSource {
    path: PathBuf,
    next: AtomicU64,
}

impl ConfigSource {
    pub fn new(path: &Path) -> ConfigSource {
        ConfigSource { path: path.to_path_buf(), next: AtomicU64::new(1) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates the file; only a valid config gets a generation number.
    pub fn load(&self) -> Result<Generation, ConfigError> {
        let config = ValidatedConfig::load(&self.path)?;
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        tracing::info!(generation = number, path = %self.path.display(), "config loaded");
        Ok(Generation { number, config: Arc::new(config) })
    }
}
