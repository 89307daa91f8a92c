//! Server addresses: what [`Connection::connect`](crate::Connection::connect) accepts, and the
//! default port.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use rpyc_protocol::DEFAULT_PORT;

/// Something that names a server: `"host:port"`, a bare `"host"` (meaning port
/// [`DEFAULT_PORT`]), an IPv6 address with or without brackets (`"[::1]:18812"`, `"::1"`), a
/// [`SocketAddr`], an [`IpAddr`], or a `(host, port)` pair.
pub trait IntoServerAddr {
    /// The address as `host:port` text, with the default port added if none was given.
    fn into_server_addr(self) -> String;
}

impl IntoServerAddr for &str {
    fn into_server_addr(self) -> String {
        with_default_port(self)
    }
}

impl IntoServerAddr for String {
    fn into_server_addr(self) -> String {
        with_default_port(&self)
    }
}

impl IntoServerAddr for &String {
    fn into_server_addr(self) -> String {
        with_default_port(self)
    }
}

impl IntoServerAddr for SocketAddr {
    fn into_server_addr(self) -> String {
        self.to_string()
    }
}

impl IntoServerAddr for SocketAddrV4 {
    fn into_server_addr(self) -> String {
        self.to_string()
    }
}

impl IntoServerAddr for SocketAddrV6 {
    fn into_server_addr(self) -> String {
        self.to_string()
    }
}

impl IntoServerAddr for IpAddr {
    fn into_server_addr(self) -> String {
        SocketAddr::new(self, DEFAULT_PORT).to_string()
    }
}

impl IntoServerAddr for (IpAddr, u16) {
    fn into_server_addr(self) -> String {
        SocketAddr::from(self).to_string()
    }
}

impl IntoServerAddr for (&str, u16) {
    fn into_server_addr(self) -> String {
        host_port(self.0, self.1)
    }
}

impl IntoServerAddr for (String, u16) {
    fn into_server_addr(self) -> String {
        host_port(&self.0, self.1)
    }
}

/// `host:port`, bracketing a bare IPv6 host.
fn host_port(host: &str, port: u16) -> String {
    if host.parse::<Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Adds `:DEFAULT_PORT` to an address that has no port.
///
/// `host:port` and `[v6]:port` are kept; `host`, `[v6]` and a bare IPv6 address (`::1`) get the
/// default port. Anything else is returned trimmed, for resolution to reject with a clear error.
pub(crate) fn with_default_port(addr: &str) -> String {
    let addr = addr.trim();
    // `rpyc://[TOKEN@]host[:port]` and `rpycs://…`: default the port, keep the rest.
    if let Some((scheme, rest)) = addr.split_once("://") {
        let (token, host) = match rest.rsplit_once('@') {
            Some((token, host)) => (Some(token), host),
            None => (None, rest),
        };
        let host = with_default_port(host.trim_end_matches('/'));
        return match token {
            Some(token) => format!("{scheme}://{token}@{host}"),
            None => format!("{scheme}://{host}"),
        };
    }
    if let Some(rest) = addr.strip_prefix('[') {
        // `[v6]` or `[v6]:port`.
        return match rest.split_once(']') {
            Some((_, "")) => format!("{addr}:{DEFAULT_PORT}"),
            _ => addr.to_owned(),
        };
    }
    match addr.matches(':').count() {
        0 => format!("{addr}:{DEFAULT_PORT}"),
        1 => addr.to_owned(),
        // Two or more colons: a bare IPv6 address (a port needs brackets there).
        _ if addr.parse::<Ipv6Addr>().is_ok() => format!("[{addr}]:{DEFAULT_PORT}"),
        _ => addr.to_owned(),
    }
}

/// A server address split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// `host:port`.
    pub(crate) addr: String,
    /// The token given in an `rpyc://TOKEN@host` address.
    pub(crate) token: Option<String>,
    /// `rpycs://`: the address asks for TLS.
    pub(crate) tls: bool,
}

/// Splits an address (as [`with_default_port`] returns it) into host:port, token and scheme.
///
/// # Errors
/// An unknown scheme is named in the error text.
pub(crate) fn parse_target(addr: &str) -> Result<Target, String> {
    let Some((scheme, rest)) = addr.split_once("://") else {
        return Ok(Target {
            addr: addr.to_owned(),
            token: None,
            tls: false,
        });
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "rpyc" => false,
        "rpycs" => true,
        other => {
            return Err(format!(
                "unknown address scheme {other:?}: use rpyc://[TOKEN@]host[:port] or \
                 rpycs://[TOKEN@]host[:port]"
            ));
        }
    };
    let (token, host) = match rest.rsplit_once('@') {
        Some((token, host)) => (Some(token.to_owned()).filter(|t| !t.is_empty()), host),
        None => (None, rest),
    };
    Ok(Target {
        addr: host.to_owned(),
        token,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_token_and_scheme() {
        let t = parse_target(&with_default_port("rpyc://s3cret@lab-host")).expect("url");
        assert_eq!(
            t,
            Target {
                addr: "lab-host:18812".into(),
                token: Some("s3cret".into()),
                tls: false
            }
        );
        let t = parse_target(&with_default_port("rpycs://[::1]:9000/")).expect("url");
        assert_eq!(
            (t.addr.as_str(), t.token, t.tls),
            ("[::1]:9000", None, true)
        );
        let t = parse_target(&with_default_port("127.0.0.1:1")).expect("plain");
        assert_eq!(
            (t.addr.as_str(), t.token, t.tls),
            ("127.0.0.1:1", None, false)
        );
        assert!(parse_target("http://x:1").is_err());
    }

    #[test]
    fn default_port_is_added_only_when_missing() {
        let cases = [
            ("localhost", "localhost:18812"),
            ("  localhost  ", "localhost:18812"),
            ("localhost:1234", "localhost:1234"),
            ("127.0.0.1", "127.0.0.1:18812"),
            ("127.0.0.1:18813", "127.0.0.1:18813"),
            ("example.com:80", "example.com:80"),
            ("::1", "[::1]:18812"),
            ("fe80::1:2", "[fe80::1:2]:18812"),
            ("[::1]", "[::1]:18812"),
            ("[::1]:9000", "[::1]:9000"),
            ("::1:99999", "::1:99999"),
        ];
        for (input, expected) in cases {
            assert_eq!(with_default_port(input), expected, "{input}");
        }
    }

    #[test]
    fn typed_addresses_convert() {
        let v4: SocketAddr = "127.0.0.1:5".parse().expect("v4");
        assert_eq!(v4.into_server_addr(), "127.0.0.1:5");
        let ip: IpAddr = "::1".parse().expect("v6");
        assert_eq!(ip.into_server_addr(), "[::1]:18812");
        assert_eq!(("::1", 7).into_server_addr(), "[::1]:7");
        assert_eq!(("localhost", 7).into_server_addr(), "localhost:7");
        assert_eq!(String::from("h").into_server_addr(), "h:18812");
    }
}
