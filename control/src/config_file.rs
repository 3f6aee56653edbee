//! The config file as read once: its exact text (what reloads compare) and
//! the config validated from it. The binary reads it at startup, takes its
//! logging and listeners from it and hands the same value to the control
//! plane, so the two can never see different files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use switchyard_config::{ConfigError, Overrides, ValidatedConfig};

/// One read of the config file, validated.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    /// The exact contents the config was parsed from.
    pub text: String,
    pub config: Arc<ValidatedConfig>,
    /// Command-line settings applied on top of the file, at start and on every reload.
    pub overrides: Arc<Overrides>,
}

impl ConfigFile {
    /// Reads and validates `path`; the error names the file and every problem in it.
    pub fn read(path: &Path) -> Result<ConfigFile, String> {
        ConfigFile::read_with(path, Arc::new(Overrides::default()))
    }

    /// As [`ConfigFile::read`], with command-line `overrides` applied.
    pub fn read_with(path: &Path, overrides: Arc<Overrides>) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        ConfigFile::parse(path, text, overrides).map_err(|e| e.to_string())
    }

    /// Validates `text`, the contents of `path` (relative paths in it resolve
    /// against its directory), and applies `overrides` to the result.
    pub fn parse(path: &Path, text: String, overrides: Arc<Overrides>) -> Result<ConfigFile, ConfigError> {
        match ValidatedConfig::parse(&text, path.parent().unwrap_or(Path::new("."))) {
            Ok(mut config) => {
                overrides.apply(&mut config);
                Ok(ConfigFile { path: path.to_path_buf(), text, config: Arc::new(config), overrides })
            }
            Err(mut e) => {
                e.source_name = path.display().to_string();
                Err(e)
            }
        }
    }
}

/// The directory to watch for the config file (`.` for a bare file name).
pub fn base_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
