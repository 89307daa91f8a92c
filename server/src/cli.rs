//! Command line of `rpyc-classic`.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use rpyc_protocol::DEFAULT_PORT;
use rpyc_protocol::codec::{DEFAULT_MAX_FRAME_BYTES, MAX_FRAME_BYTES_LIMIT};
use rpyc_server::tls::{TlsFiles, TlsServer};
use rpyc_server::{ProtocolMode, ServerConfig};

/// A remote Python host: clients run Python code, import modules and use objects on this
/// machine over TCP, in the manner of RPyC's classic mode.
#[derive(Debug, Parser)]
#[command(name = "rpyc-classic", version)]
pub(crate) struct Cli {
    /// Address to listen on. Loopback by default, so only this machine can connect.
    #[arg(long, default_value = "127.0.0.1", env = "RPYC_HOST")]
    pub(crate) host: IpAddr,

    /// TCP port to listen on; 0 picks a free port (the start line tells which).
    #[arg(long, short, default_value_t = DEFAULT_PORT, env = "RPYC_PORT")]
    pub(crate) port: u16,

    /// Virtual environment whose packages client code can import (default: $VIRTUAL_ENV).
    #[arg(long, value_name = "PATH")]
    pub(crate) venv: Option<PathBuf>,

    /// Most connections served at once; further clients are told so and disconnected.
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<usize>,

    /// Largest frame accepted or sent, in bytes; bigger results become a "result too large"
    /// error, bigger incoming frames close the connection.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    pub(crate) max_frame_bytes: usize,

    /// How long an idle Python thread keeps polling for the next request after answering a
    /// lone one, in microseconds (0: sleep at once). Saves a client that calls in a loop the
    /// wake-up of a sleeping thread on every call (tens of microseconds on a virtual machine),
    /// for at most this much CPU time per call. At most 1000000 (one second).
    #[arg(
        long,
        value_name = "MICROS",
        default_value_t = rpyc_server::python::DEFAULT_SPIN.as_micros() as u64,
        value_parser = clap::value_parser!(u64).range(0..=rpyc_server::python::MAX_SPIN.as_micros() as u64)
    )]
    pub(crate) spin_us: u64,

    /// Log filter, e.g. `info`, `debug`, `rpyc_server=trace` (default: $RUST_LOG, else `info`).
    #[arg(long, value_name = "FILTER")]
    pub(crate) log: Option<String>,

    /// File holding the token clients must prove they know (surrounding whitespace ignored).
    /// Required on non-loopback addresses unless --insecure-no-auth; if neither is given there,
    /// a random token is generated and written to a file the start-up log names.
    #[arg(long, value_name = "PATH", conflicts_with = "insecure_no_auth")]
    pub(crate) token_file: Option<PathBuf>,

    /// The token itself, from the environment (prefer --token-file: command lines are visible
    /// to other users).
    #[arg(skip = std::env::var("RPYC_TOKEN").ok())]
    pub(crate) token_env: Option<String>,

    /// Serve without authentication even on a network address: anyone who can reach the port
    /// can run code as this user. Prints a warning.
    #[arg(long)]
    pub(crate) insecure_no_auth: bool,

    /// Protocols served on the port: `auto` serves native rpyc-rs clients and stock Python RPyC
    /// clients (`rpyc.classic.connect`) alike, telling them apart by their first byte.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Auto)]
    pub(crate) protocol: ProtocolArg,

    /// PEM certificate chain: serve TLS only (clients connect with rpycs://). Needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,

    /// PEM CA certificates: clients must present a certificate signed by one (mutual TLS).
    /// This authenticates clients, so no token is needed on network addresses.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub(crate) tls_client_ca: Option<PathBuf>,
}

/// Where the token came from, for the start-up log.
#[derive(Debug)]
pub(crate) enum TokenSource {
    /// No token: loopback, or --insecure-no-auth.
    None,
    /// --token-file or RPYC_TOKEN.
    Given,
    /// Generated and written to this file.
    Generated(PathBuf),
}

impl Cli {
    /// The token to require, generating one for network addresses when none was given.
    pub(crate) fn token(&self) -> anyhow::Result<(Option<String>, TokenSource)> {
        self.token_at(&generated_token_path())
    }

    /// [`token`](Self::token), writing a generated token to `generated` instead of the default
    /// place.
    fn token_at(
        &self,
        generated: &std::path::Path,
    ) -> anyhow::Result<(Option<String>, TokenSource)> {
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --token-file {}", path.display()))?;
            let token = text.trim().to_owned();
            anyhow::ensure!(
                !token.is_empty(),
                "--token-file {} is empty",
                path.display()
            );
            return Ok((Some(token), TokenSource::Given));
        }
        if let Some(token) = self
            .token_env
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            return Ok((Some(token.to_owned()), TokenSource::Given));
        }
        if self.host.is_loopback() || self.insecure_no_auth || self.tls_client_ca.is_some() {
            return Ok((None, TokenSource::None));
        }
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes)
            .map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_private(generated, &token).with_context(|| {
            format!(
                "cannot write the generated token to {}",
                generated.display()
            )
        })?;
        Ok((Some(token), TokenSource::Generated(generated.to_owned())))
    }
}

/// `$XDG_CONFIG_HOME/rpyc-classic/token`, `~/.config/...` or `%APPDATA%\rpyc-classic\token`;
/// the temporary directory as a last resort.
fn generated_token_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("APPDATA").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("rpyc-classic").join("token")
}

/// Writes a file only its owner can read (Unix permissions 0600).
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}

impl TryFrom<&Cli> for ServerConfig {
    type Error = anyhow::Error;

    fn try_from(cli: &Cli) -> anyhow::Result<Self> {
        if cli.max_frame_bytes < 1024 || cli.max_frame_bytes > MAX_FRAME_BYTES_LIMIT {
            anyhow::bail!(
                "--max-frame-bytes must be between 1024 and {MAX_FRAME_BYTES_LIMIT}, got {}",
                cli.max_frame_bytes
            );
        }
        if cli.max_connections == Some(0) {
            anyhow::bail!("--max-connections must be at least 1");
        }
        let mut config = ServerConfig::default();
        if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
            let mut files = TlsFiles::new(cert.clone(), key.clone());
            if let Some(ca) = &cli.tls_client_ca {
                files = files.with_client_ca(ca.clone());
            }
            config.tls = Some(TlsServer::load(&files)?);
        }
        config.max_frame_bytes = cli.max_frame_bytes;
        config.max_connections = cli.max_connections;
        config.protocol = match cli.protocol {
            ProtocolArg::Auto => ProtocolMode::Auto,
            ProtocolArg::Native => ProtocolMode::Native,
            ProtocolArg::Rpyc => ProtocolMode::Rpyc,
        };
        Ok(config)
    }
}

/// `--protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ProtocolArg {
    /// Native and stock RPyC clients, told apart by their first byte.
    Auto,
    /// Native rpyc-rs clients only.
    Native,
    /// Stock Python RPyC clients only.
    Rpyc,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut cli = Cli::parse_from(std::iter::once("rpyc-classic").chain(args.iter().copied()));
        cli.token_env = None;
        cli
    }

    #[test]
    fn loopback_needs_no_token_network_addresses_get_one() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("rpyc-cli-test-{}", std::process::id()));
        let file = dir.join("token");
        let (token, source) = parse(&[]).token_at(&file)?;
        assert!(token.is_none() && matches!(source, TokenSource::None));
        let (token, source) = parse(&["--host", "::1"]).token_at(&file)?;
        assert!(token.is_none() && matches!(source, TokenSource::None));

        let (token, source) = parse(&["--host", "10.1.2.3"]).token_at(&file)?;
        let token = token.ok_or_else(|| anyhow::anyhow!("no token generated"))?;
        assert_eq!(token.len(), 48);
        assert!(matches!(source, TokenSource::Generated(ref p) if p == &file));
        assert_eq!(std::fs::read_to_string(&file)?.trim(), token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&file)?.permissions().mode() & 0o777,
                0o600
            );
        }
        let (again, _) = parse(&["--host", "10.1.2.3"]).token_at(&file)?;
        assert_ne!(
            again.as_deref(),
            Some(token.as_str()),
            "tokens must be fresh"
        );

        let (token, source) =
            parse(&["--host", "10.1.2.3", "--insecure-no-auth"]).token_at(&file)?;
        assert!(token.is_none() && matches!(source, TokenSource::None));

        std::fs::write(dir.join("given"), "  s3cret \n")?;
        let given = dir.join("given").display().to_string();
        let (token, source) = parse(&["--token-file", &given]).token_at(&file)?;
        assert_eq!(token.as_deref(), Some("s3cret"));
        assert!(matches!(source, TokenSource::Given));
        assert!(
            Cli::try_parse_from(["rpyc-classic", "--token-file", "x", "--insecure-no-auth"])
                .is_err()
        );
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }
}
