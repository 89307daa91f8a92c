//! Starting the embedded interpreter.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

/// Sets a string field of a `PyConfig` (CPython copies and owns the string).
macro_rules! set_config_string {
    ($config:expr, $field:ident, $value:expr) => {{
        let value = CString::new($value).map_err(|e| PythonError::Init(e.to_string()))?;
        let config: *mut ffi::PyConfig = $config;
        // Expanded inside `initialize_interpreter`'s unsafe block: `config` points to a PyConfig
        // initialised by CPython, and the field belongs to it.
        status(ffi::PyConfig_SetBytesString(
            config,
            &raw mut (*config).$field,
            value.as_ptr(),
        ))
    }};
}

/// Python home baked in by `build.rs`: `sys.base_prefix` of the interpreter the build linked.
const BUILD_PYTHON_HOME: Option<&str> = option_env!("RPYC_PYTHON_HOME");
/// The interpreter the build linked against, used as `sys.executable`.
const BUILD_PYTHON_EXECUTABLE: Option<&str> = option_env!("RPYC_PYTHON_EXECUTABLE");

/// The server-side helper module (`_rpyc_server`), loaded once by [`init`].
pub(super) static SUPPORT: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// How to set up the embedded interpreter.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PythonConfig {
    /// A virtual environment whose packages client code can import (`--venv`, or
    /// `VIRTUAL_ENV`).
    pub venv: Option<PathBuf>,
}

impl PythonConfig {
    /// A configuration that uses the given virtual environment, if any.
    pub fn with_venv(venv: Option<PathBuf>) -> Self {
        PythonConfig { venv }
    }
}

/// Facts about the running interpreter, for the start line and the handshake.
#[derive(Debug, Clone)]
pub struct PythonInfo {
    /// `X.Y.Z`.
    pub version: String,
    /// `sys.version`.
    pub full_version: String,
    /// `sys.prefix`.
    pub prefix: String,
}

/// The interpreter could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PythonError {
    /// `Py_InitializeFromConfig` failed.
    #[error("cannot start the embedded Python interpreter: {0}")]
    Init(String),
    /// Python raised during set-up.
    #[error("setting up the embedded Python interpreter failed: {0}")]
    Setup(String),
    /// The virtual environment has no site-packages directory.
    #[error("virtual environment {path}: no site-packages directory found (looked for {looked})")]
    Venv {
        /// The venv given.
        path: PathBuf,
        /// Where we looked.
        looked: String,
    },
}

/// Starts the interpreter once for the whole process and returns what it is.
///
/// Sets the Python home explicitly (unless `PYTHONHOME` is set) from the interpreter the build
/// used, so a fresh machine needs no environment variables, and never lets an unrelated
/// `python3` on `PATH` decide where the standard library is. Python's own signal handlers are
/// not installed: the server handles Ctrl-C itself.
///
/// # Errors
/// [`PythonError`] if the interpreter cannot start or set-up code raises.
pub fn init(config: &PythonConfig) -> Result<PythonInfo, PythonError> {
    // SAFETY: called once, from the main thread, before any other Python use; the PyConfig is
    // initialised by CPython and cleared after use.
    unsafe { initialize_interpreter()? };
    let info = Python::attach(|py| setup(py, config));
    // Py_InitializeFromConfig left this thread holding the GIL: hand it back for good, so the
    // worker threads can take it. The thread state stays allocated for the process lifetime.
    // SAFETY: the interpreter is initialised and this thread holds the GIL.
    unsafe { ffi::PyEval_SaveThread() };
    info
}

unsafe fn initialize_interpreter() -> Result<(), PythonError> {
    // SAFETY: plain CPython initialisation sequence (see the "Python Initialization
    // Configuration" chapter of the C API docs).
    unsafe {
        if ffi::Py_IsInitialized() != 0 {
            return Ok(());
        }
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::zeroed();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let mut config = config.assume_init();
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        let result = (|| {
            if std::env::var_os("PYTHONHOME").is_none()
                && let Some(home) = BUILD_PYTHON_HOME.filter(|h| Path::new(h).is_dir())
            {
                set_config_string!(&mut config, home, home)?;
            }
            if let Some(exe) = BUILD_PYTHON_EXECUTABLE.filter(|e| Path::new(e).is_file()) {
                set_config_string!(&mut config, executable, exe)?;
            }
            status(ffi::Py_InitializeFromConfig(&config))
        })();
        ffi::PyConfig_Clear(&mut config);
        result
    }
}

unsafe fn status(status: ffi::PyStatus) -> Result<(), PythonError> {
    // SAFETY: `status` came from CPython; err_msg is a static C string or null.
    unsafe {
        if ffi::PyStatus_Exception(status) == 0 {
            return Ok(());
        }
        let msg = if status.err_msg.is_null() {
            "unknown error".to_owned()
        } else {
            std::ffi::CStr::from_ptr(status.err_msg)
                .to_string_lossy()
                .into_owned()
        };
        Err(PythonError::Init(msg))
    }
}

fn setup(py: Python<'_>, config: &PythonConfig) -> Result<PythonInfo, PythonError> {
    let err = |e: PyErr| PythonError::Setup(super::exception::describe(py, &e));
    let support = PyModule::from_code(
        py,
        c_str(include_str!("support.py"))?.as_c_str(),
        c"<rpyc-classic support>",
        c"_rpyc_server",
    )
    .map_err(err)?;
    py.import("sys")
        .and_then(|sys| sys.getattr("modules")?.set_item("_rpyc_server", &support))
        .map_err(err)?;
    support.call_method0("configure_stdio").map_err(err)?;
    let _ = SUPPORT.set(py, support.unbind());

    let venv = config
        .venv
        .clone()
        .or_else(|| std::env::var_os("VIRTUAL_ENV").map(PathBuf::from));
    if let Some(venv) = venv {
        add_venv(py, &venv)?;
    }

    let sys = py.import("sys").map_err(err)?;
    let get = |name: &str| -> Result<String, PythonError> {
        sys.getattr(name)
            .and_then(|v| v.str())
            .map(|s| s.to_string())
            .map_err(err)
    };
    let full_version = get("version")?;
    let version = full_version
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok(PythonInfo {
        version,
        full_version,
        prefix: get("prefix")?,
    })
}

/// Makes a virtual environment's packages importable, ahead of the base interpreter's.
fn add_venv(py: Python<'_>, venv: &Path) -> Result<(), PythonError> {
    let err = |e: PyErr| PythonError::Setup(super::exception::describe(py, &e));
    let (major, minor) = {
        let v = py.version_info();
        (v.major, v.minor)
    };
    let candidates = [
        venv.join("lib")
            .join(format!("python{major}.{minor}"))
            .join("site-packages"),
        venv.join("Lib").join("site-packages"),
    ];
    let Some(site_packages) = candidates.iter().find(|p| p.is_dir()) else {
        return Err(PythonError::Venv {
            path: venv.to_owned(),
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let code = c"import site, sys\n\
def _add(path):\n    before = list(sys.path)\n    site.addsitedir(path)\n    added = [p for p in sys.path if p not in before]\n    sys.path[:] = added + before\n";
    let helpers =
        PyModule::from_code(py, code, c"<rpyc-classic venv>", c"_rpyc_venv").map_err(err)?;
    helpers
        .call_method1("_add", (site_packages.display().to_string(),))
        .map_err(err)?;
    tracing::info!(venv = %venv.display(), site_packages = %site_packages.display(), "using virtual environment");
    Ok(())
}

fn c_str(s: &str) -> Result<CString, PythonError> {
    CString::new(s).map_err(|e| PythonError::Setup(e.to_string()))
}
