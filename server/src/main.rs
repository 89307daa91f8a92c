//! `rpyc-classic`: parse the command line, start Python, bind, print the start line, serve.

mod cli;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rpyc_server::{SERVER_NAME, ServerConfig, python, server};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rpyc-classic: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = cli::Cli::parse();
    let filter = match &cli.log {
        Some(f) => EnvFilter::try_new(f).with_context(|| format!("invalid --log filter {f:?}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // Log lines are written by a background thread, so a Python thread that logs a client's
    // exception (with its traceback) never waits for stderr while it holds the GIL, and a
    // stderr nobody reads cannot freeze the server (lines beyond the buffer are dropped then).
    // The guard flushes what is left when main returns.
    let (writer, _log_guard) = tracing_appender::non_blocking(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let mut config = ServerConfig::try_from(&cli)?;
    let (token, token_source) = cli.token()?;
    config.token = token;
    // Python starts on the main thread, before any other thread exists.
    let info = python::init(&python::PythonConfig::with_venv(cli.venv.clone()))?;
    python::set_spin(std::time::Duration::from_micros(cli.spin_us));
    config.python_version = info.full_version.clone();
    tracing::debug!(prefix = %info.prefix, "embedded Python ready");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((cli.host, cli.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", cli.host, cli.port))?;
        let addr = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{SERVER_NAME}: server started on {addr} (Python {})",
                info.version
            )?;
            out.flush()?;
        }
        match &token_source {
            cli::TokenSource::Generated(path) => tracing::info!(
                path = %path.display(),
                "clients must authenticate: no token was given for a network address, so one was generated and written to this file"
            ),
            cli::TokenSource::Given => tracing::info!("clients must authenticate with the token"),
            cli::TokenSource::None if cli.insecure_no_auth && !cli.host.is_loopback() => tracing::warn!(
                "--insecure-no-auth: anyone who can reach {addr} can run code as this user"
            ),
            cli::TokenSource::None => {}
        }
        if let Some(tls) = &config.tls {
            tracing::info!(
                client_certificates = tls.requires_client_certificates(),
                "TLS only: clients connect with rpycs://"
            );
        }
        // The accept loop runs on a worker thread, so each connection task starts on the thread
        // that accepted it instead of waking another one.
        tokio::spawn(server::run(listener, config, shutdown_signal()))
            .await
            .context("the server task failed")?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on Ctrl-C (every OS) or SIGTERM (Unix).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
