//! Build script: make `rpyc-classic` find libpython and its standard library at run time with no
//! environment variables set.
//!
//! - rpath: `pyo3-build-config` adds `-Wl,-rpath,<libdir>` for the interpreter the build used.
//! - Python home: the build interpreter's `sys.base_prefix` is baked in as `RPYC_PYTHON_HOME`, so
//!   start-up sets it explicitly instead of letting an embedded interpreter guess (it would pick
//!   whatever `python3` is first on `PATH`, or the system's standard library).

use std::process::Command;

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    pyo3_build_config::add_python_framework_link_args();
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-changed=build.rs");

    let config = pyo3_build_config::get();
    let Some(executable) = config.executable() else {
        println!("cargo:warning=no Python executable known to pyo3; Python home will not be set");
        return;
    };
    println!("cargo:rustc-env=RPYC_PYTHON_EXECUTABLE={executable}");
    let out = Command::new(executable)
        .args(["-c", "import sys; print(sys.base_prefix)"])
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let home = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            println!("cargo:rustc-env=RPYC_PYTHON_HOME={home}");
        }
        other => println!("cargo:warning=cannot ask {executable} for sys.base_prefix: {other:?}"),
    }
}
