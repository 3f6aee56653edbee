//! Finding and loading `libonnxruntime.so` (ort's `load-dynamic`), and the one
//! ONNX Runtime environment of the process.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider as _};
use switchyard_config::{ExecutionProvider, OnnxRuntime};

/// Where `scripts/setup.sh` links the wheel's library, relative to the
/// repository root (looked up from the current directory and the executable's).
pub const SETUP_LIBRARY: &str = ".switchyard/lib/libonnxruntime.so";

/// The environment variable ort itself honours.
pub const LIBRARY_ENV: &str = "ORT_DYLIB_PATH";

/// The loaded library: the process-wide environment and where it came from.
#[derive(Clone)]
pub struct Library {
    pub env: Environment,
    pub path: PathBuf,
}

/// Every place the library is looked for, in order: the configured path,
/// `ORT_DYLIB_PATH`, then [`SETUP_LIBRARY`] under the current directory and
/// under the executable's directory and each of its ancestors.
pub fn library_candidates(
    configured: Option<&Path>,
    env: Option<OsString>,
    cwd: Option<&Path>,
    exe: Option<&Path>,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut push = |p: PathBuf| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    if let Some(p) = configured {
        push(p.to_path_buf());
    }
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        push(PathBuf::from(p));
    }
    if let Some(cwd) = cwd {
        push(cwd.join(SETUP_LIBRARY));
    }
    if let Some(dir) = exe.and_then(Path::parent) {
        for a in dir.ancestors() {
            push(a.join(SETUP_LIBRARY));
        }
    }
    out
}

/// The first candidate that exists, or the error that says where we looked and how to fix it.
pub fn find_library(candidates: &[PathBuf]) -> Result<PathBuf, String> {
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        format!(
            "ONNX Runtime library not found (looked in: {}). Run scripts/setup.sh, or set {LIBRARY_ENV} to \
             libonnxruntime.so from the onnxruntime 1.31 wheel",
            looked.join(", ")
        )
    })
}

/// The candidates for this process (config, environment, current dir, executable).
pub fn process_candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    library_candidates(configured, std::env::var_os(LIBRARY_ENV), cwd.as_deref(), exe.as_deref())
}

/// Loads the library and creates the environment once per process; later
/// calls return the same one (a library cannot be swapped once loaded).
pub fn load(cfg: &OnnxRuntime) -> Result<Library, String> {
    static LOADED: Mutex<Option<Library>> = Mutex::new(None);
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(lib) = loaded.as_ref() {
        if let Some(p) = &cfg.library_path {
            if p != &lib.path {
                tracing::warn!(
                    configured = %p.display(),
                    loaded = %lib.path.display(),
                    "ONNX Runtime is already loaded in this process; the configured library_path takes effect on restart"
                );
            }
        }
        return Ok(lib.clone());
    }
    let candidates = process_candidates(cfg.library_path.as_deref());
    let path = find_library(&candidates)?;
    if let Some(p) = &cfg.library_path {
        if p != &path {
            tracing::warn!(configured = %p.display(), using = %path.display(), "configured ONNX Runtime library_path does not exist");
        }
    }
    let env = ort::init_from(&path)
        .map_err(|e| {
            format!(
                "cannot load the ONNX Runtime library {}: {e}. Run scripts/setup.sh, or set {LIBRARY_ENV} to \
                 libonnxruntime.so from the onnxruntime 1.31 wheel",
                path.display()
            )
        })?
        .with_name("switchyard")
        .with_telemetry(false)
        .build()
        .map_err(|e| format!("cannot create the ONNX Runtime environment ({}): {e}", path.display()))?;
    tracing::info!(path = %path.display(), "loaded ONNX Runtime");
    let lib = Library { env, path };
    *loaded = Some(lib.clone());
    Ok(lib)
}

/// Checks that the configured execution provider exists in the loaded library.
pub fn check_provider(lib: &Library, provider: ExecutionProvider) -> Result<(), String> {
    match provider {
        ExecutionProvider::Cpu => Ok(()),
        ExecutionProvider::Cuda { .. } => match ep::CUDA::is_available() {
            Ok(true) => Ok(()),
            Ok(false) => Err(cuda_unavailable(lib, "it does not list CUDAExecutionProvider")),
            Err(e) => Err(cuda_unavailable(lib, &e.to_string())),
        },
    }
}

pub fn cuda_unavailable(lib: &Library, why: &str) -> String {
    format!(
        "the CUDA execution provider is not available in the loaded ONNX Runtime library {} ({why}); \
         point runtime.onnx.library_path or {LIBRARY_ENV} at libonnxruntime.so from the onnxruntime-gpu wheel, \
         or use execution_provider: cpu",
        lib.path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_ordered_and_deduplicated() {
        let c = library_candidates(
            Some(Path::new("/cfg/libonnxruntime.so")),
            Some(OsString::from("/env/libonnxruntime.so")),
            Some(Path::new("/work/repo")),
            Some(Path::new("/work/repo/target/debug/switchyard")),
        );
        let want: Vec<PathBuf> = [
            "/cfg/libonnxruntime.so",
            "/env/libonnxruntime.so",
            "/work/repo/.switchyard/lib/libonnxruntime.so",
            "/work/repo/target/debug/.switchyard/lib/libonnxruntime.so",
            "/work/repo/target/.switchyard/lib/libonnxruntime.so",
            "/work/.switchyard/lib/libonnxruntime.so",
            "/.switchyard/lib/libonnxruntime.so",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(c, want);
    }

    #[test]
    fn empty_env_var_is_ignored() {
        let c = library_candidates(None, Some(OsString::new()), None, None);
        assert!(c.is_empty());
    }

    #[test]
    fn missing_library_gives_a_clear_error() {
        let c = library_candidates(
            Some(Path::new("/nonexistent/a/libonnxruntime.so")),
            Some(OsString::from("/nonexistent/b/libonnxruntime.so")),
            Some(Path::new("/nonexistent/cwd")),
            None,
        );
        let err = find_library(&c).unwrap_err();
        assert!(
            err.starts_with("ONNX Runtime library not found (looked in: /nonexistent/a/libonnxruntime.so, "),
            "{err}"
        );
        assert!(err.contains("/nonexistent/b/libonnxruntime.so"), "{err}");
        assert!(err.contains("/nonexistent/cwd/.switchyard/lib/libonnxruntime.so"), "{err}");
        assert!(err.contains("Run scripts/setup.sh, or set ORT_DYLIB_PATH"), "{err}");
    }

    #[test]
    fn first_existing_candidate_wins() {
        let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let c = vec![PathBuf::from("/nonexistent/libonnxruntime.so"), here.clone()];
        assert_eq!(find_library(&c).unwrap(), here);
    }
}
