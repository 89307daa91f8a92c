//! TLS: server certificates, mutual TLS, and clear errors when one side lacks TLS.
//! Certificates are generated here (rcgen); none are committed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rpyc_client::{Connection, TlsOptions, Value};
use rpyc_integration_tests::TestServer;

/// A throwaway PKI in a temporary directory: a CA, a server certificate for 127.0.0.1 and
/// localhost, a client certificate from the same CA, and a second, unrelated CA.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> anyhow::Result<Pki> {
        let dir = std::env::temp_dir().join(format!("rpyc-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let write = |file: &str, text: String| std::fs::write(dir.join(file), text);

        let ca = ca("rpyc test CA")?;
        write("ca.pem", ca.pem())?;
        let other = ca_only("another CA")?;
        write("other-ca.pem", other)?;

        let server_key = KeyPair::generate()?;
        let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?
            .signed_by(&server_key, &ca)?;
        write("server.pem", server.pem())?;
        write("server.key", server_key.serialize_pem())?;

        let client_key = KeyPair::generate()?;
        let client =
            CertificateParams::new(vec!["test-client".to_owned()])?.signed_by(&client_key, &ca)?;
        write("client.pem", client.pem())?;
        write("client.key", client_key.serialize_pem())?;
        Ok(Pki { dir })
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn server(&self, mutual: bool) -> anyhow::Result<TestServer> {
        let mut builder = TestServer::builder()
            .arg("--tls-cert")
            .arg(self.path("server.pem"))
            .arg("--tls-key")
            .arg(self.path("server.key"));
        if mutual {
            builder = builder.arg("--tls-client-ca").arg(self.path("ca.pem"));
        }
        builder.start()
    }

    fn options(&self) -> TlsOptions {
        TlsOptions::new().ca_file(self.dir.join("ca.pem"))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ca(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

fn ca_only(name: &str) -> anyhow::Result<String> {
    Ok(ca(name)?.pem())
}

fn exists(p: &str) -> bool {
    Path::new(p).exists()
}

#[tokio::test]
async fn tls_connection_works_and_plain_clients_get_a_clear_error() -> anyhow::Result<()> {
    let pki = Pki::new("basic")?;
    assert!(exists(&pki.path("server.pem")));
    let server = pki.server(false)?;
    let url = format!("rpycs://{}", server.url());
    let conn = Connection::builder(url.as_str())
        .tls(pki.options())
        .connect()
        .await?;
    assert_eq!(conn.eval::<i64>("6*7").await?, 42);
    let data: serde_bytes::ByteBuf = conn.eval("bytes(range(256)) * 4096").await?;
    assert_eq!(data.len(), 1 << 20);
    assert!(conn.ping().await? < Duration::from_secs(1));
    // The name in the certificate: localhost works too.
    let by_name = format!("rpycs://localhost:{}", server.addr().port());
    let conn2 = Connection::builder(by_name.as_str())
        .tls(pki.options())
        .connect()
        .await?;
    assert_eq!(conn2.eval::<String>("'ok'").await?, "ok");

    // A plain client: a clear error on the client, a logged reason on the server.
    let err = Connection::connect(server.url())
        .await
        .expect_err("plain client");
    assert!(err.to_string().contains("rpycs://"), "{err}");
    assert!(server.wait_for_log("TLS handshake failed", Duration::from_secs(5)));
    // rpycs:// without a CA names the fix.
    let err = Connection::connect(url.as_str()).await.expect_err("no CA");
    assert!(err.to_string().contains("ca_file"), "{err}");
    // A CA that did not sign the server's certificate.
    let err = Connection::builder(url.as_str())
        .tls(TlsOptions::new().ca_file(pki.dir.join("other-ca.pem")))
        .connect()
        .await
        .expect_err("untrusted server");
    assert!(err.to_string().contains("TLS handshake"), "{err}");
    assert_eq!(
        conn.eval::<i64>("1").await?,
        1,
        "the good connection is undisturbed"
    );
    Ok(())
}

#[tokio::test]
async fn tls_client_against_a_plain_server_gets_a_clear_error() -> anyhow::Result<()> {
    let pki = Pki::new("plain")?;
    let server = TestServer::start()?;
    let url = format!("rpycs://{}", server.url());
    let err = Connection::builder(url.as_str())
        .tls(pki.options())
        .connect()
        .await
        .expect_err("TLS to a plain server");
    assert!(err.to_string().contains("TLS handshake"), "{err}");
    assert!(
        server.wait_for_log("client speaks TLS", Duration::from_secs(5)),
        "{}",
        server.stderr()
    );
    let conn = Connection::connect(server.url()).await?;
    assert_eq!(conn.eval::<i64>("2+2").await?, 4);
    Ok(())
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate() -> anyhow::Result<()> {
    let pki = Pki::new("mutual")?;
    let server = pki.server(true)?;
    let url = format!("rpycs://{}", server.url());
    let err = Connection::builder(url.as_str())
        .tls(pki.options())
        .connect()
        .await
        .expect_err("no client certificate");
    assert!(!err.is_remote(), "{err}");
    let conn = Connection::builder(url.as_str())
        .tls(
            pki.options()
                .client_cert(pki.dir.join("client.pem"), pki.dir.join("client.key")),
        )
        .connect()
        .await?;
    assert_eq!(conn.eval::<i64>("5*5").await?, 25);
    // The blocking client takes the same options.
    let options = pki
        .options()
        .client_cert(pki.dir.join("client.pem"), pki.dir.join("client.key"));
    let n = std::thread::spawn(move || -> anyhow::Result<i64> {
        let conn = rpyc_client::blocking::Connection::builder(url.as_str())
            .tls(options)
            .connect()?;
        Ok(conn.eval::<i64>("3*3")?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread panicked"))??;
    assert_eq!(n, 9);
    Ok(())
}

#[tokio::test]
async fn tls_uploads_of_large_byte_strings_arrive_intact() -> anyhow::Result<()> {
    // Large byte strings leave the client from their own memory, between the frame's other
    // bytes, through the TLS writer; the server compares each with its own copy.
    let pki = Pki::new("upload")?;
    let server = pki.server(false)?;
    let url = format!("rpycs://{}", server.url());
    let conn = Connection::builder(url.as_str())
        .tls(pki.options())
        .connect()
        .await?;
    conn.execute(
        "import os\nblobs = [os.urandom(n) for n in ((6 << 20) + 5, 65536, (1 << 20) - 1, 3)]",
    )
    .await?;
    let blobs: Vec<serde_bytes::ByteBuf> = conn.eval("blobs").await?;
    let blobs: Vec<bytes::Bytes> = blobs.into_iter().map(|b| b.into_vec().into()).collect();
    let check = conn
        .eval_object("lambda *xs: [i if x == blobs[i] else -1 for i, x in xs]")
        .await?;
    let arg = |i: usize| Value::Tuple(vec![Value::from(i), Value::bytes(blobs[i].clone())]);
    // All in one call, mixed with a small one.
    let all: Vec<i64> = check.call_as((arg(0), arg(3), arg(1), arg(2))).await?;
    assert_eq!(all, [0, 3, 1, 2]);
    // Pipelined from several tasks at once.
    let tasks: Vec<_> = (0..6)
        .map(|t| {
            let check = check.clone();
            let args = (arg(t % 3), arg(3), arg((t + 1) % 3));
            tokio::spawn(async move { check.call_as::<Vec<i64>>(args).await })
        })
        .collect();
    for (t, task) in tasks.into_iter().enumerate() {
        let got = task.await??;
        assert_eq!(got, [(t % 3) as i64, 3, ((t + 1) % 3) as i64], "task {t}");
    }
    // A changed byte is noticed (the check compares contents).
    let mut changed = blobs[0].to_vec();
    changed[5 << 20] ^= 1;
    let changed = Value::Tuple(vec![Value::from(0), Value::bytes(changed)]);
    assert_eq!(check.call_as::<Vec<i64>>((changed,)).await?, [-1]);
    assert_eq!(conn.eval::<i64>("len(blobs)").await?, 4);
    Ok(())
}
