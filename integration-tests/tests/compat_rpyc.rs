//! Stock RPyC's wire protocol on our port (issue 6): frames captured from a stock client and
//! server (`shared/rpyc-protocol.md`, section 10) are sent to the real binary, and its replies
//! are checked byte for byte where they hold no object addresses. Then hostile input: garbage
//! after an RPyC-looking first byte, oversized lengths, zlib bombs; other clients must not notice.

use std::time::Duration;

use anyhow::{Context, bail};
use rpyc_integration_tests::TestServer;
use rpyc_protocol::brine::message::{
    FRAME_HEADER_LEN, Message, MessageKind, decode_payload, deflate, encode_frame, handler,
    parse_header,
};
use rpyc_protocol::brine::{self, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::assert_healthy;

const ALPHABET_X20_LEN: usize = 520;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A raw stock-RPyC connection: frames in, frames out.
struct RpycRaw {
    stream: TcpStream,
}

impl RpycRaw {
    async fn connect(server: &TestServer) -> anyhow::Result<RpycRaw> {
        Ok(RpycRaw {
            stream: TcpStream::connect(server.addr()).await?,
        })
    }

    async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    async fn request(&mut self, seq: u64, handler: i64, args: Value) -> anyhow::Result<()> {
        let message = Message {
            kind: MessageKind::Request,
            seq,
            body: Value::tuple([Value::Int(handler), args]),
        };
        let mut frame = Vec::new();
        encode_frame(&message, usize::MAX, &mut frame)?;
        self.send_raw(&frame).await
    }

    /// The next whole frame, as raw bytes (header, payload, newline).
    async fn recv_frame(&mut self) -> anyhow::Result<Vec<u8>> {
        tokio::time::timeout(Duration::from_secs(20), async {
            let mut header = [0u8; FRAME_HEADER_LEN];
            self.stream.read_exact(&mut header).await?;
            let len = parse_header(&header).len;
            let mut rest = vec![0u8; len + 1];
            self.stream.read_exact(&mut rest).await?;
            let mut frame = header.to_vec();
            frame.extend(rest);
            anyhow::Ok(frame)
        })
        .await
        .context("no RPyC frame from the server within 20 s")?
    }

    async fn recv(&mut self) -> anyhow::Result<Message> {
        let frame = self.recv_frame().await?;
        if frame[4] != 0 {
            bail!("the server sent a compressed frame; we never do");
        }
        Ok(decode_payload(&frame[FRAME_HEADER_LEN..frame.len() - 1])?)
    }

    /// Sends a request and returns the reply body (or the exception payload as an error).
    async fn call(&mut self, seq: u64, handler: i64, args: Value) -> anyhow::Result<Value> {
        self.request(seq, handler, args).await?;
        let reply = self.recv().await?;
        if reply.seq != seq {
            bail!("reply for seq {} while waiting for {seq}", reply.seq);
        }
        match reply.kind {
            MessageKind::Reply => Ok(reply.body),
            MessageKind::Exception => bail!("remote exception: {}", reply.body),
            MessageKind::Request => bail!("unexpected request from the server: {reply:?}"),
        }
    }

    async fn expect_closed(&mut self) -> anyhow::Result<()> {
        let mut buf = [0u8; 4096];
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await
        .context("the server did not close the RPyC connection")
    }
}

fn value(v: Value) -> Value {
    Value::tuple([Value::Int(1), v])
}

fn local_ref(id_pack: &Value) -> Value {
    Value::tuple([Value::Int(3), id_pack.clone()])
}

fn boxed_tuple(items: impl IntoIterator<Item = Value>) -> Value {
    Value::tuple([Value::Int(2), Value::tuple(items)])
}

/// The id_pack in a `(LABEL_REMOTE_REF, id_pack)` reply.
fn remote_ref(reply: &Value) -> anyhow::Result<Value> {
    match reply.as_tuple() {
        Some([label, id_pack]) if label.as_int() == Some(4) => Ok(id_pack.clone()),
        _ => bail!("expected a reference, got {reply}"),
    }
}

#[tokio::test]
async fn captured_stock_frames_get_stock_replies() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let mut c = RpycRaw::connect(&server).await?;

    // Trace 10.1 #1 → #2: GETROOT; the reply names the root like stock's, with our own ids.
    c.send_raw(&unhex("000000080001115011531151020a")).await?;
    let frame = c.recv_frame().await?;
    let stable = "00021150115412080e1e727079632e636f72652e736572766963652e536c61766553657276696365";
    assert!(
        hex(&frame[4..]).starts_with(stable),
        "GETROOT reply {}",
        hex(&frame)
    );
    let reply = decode_payload(&frame[FRAME_HEADER_LEN..frame.len() - 1])?;
    let root = remote_ref(&reply.body)?;

    // #3: INSPECT the root: (name, doc) pairs including the classic members.
    let methods = c
        .call(1, handler::INSPECT, value(Value::tuple([root.clone()])))
        .await?;
    let text = methods.to_string();
    for name in ["\"eval\"", "\"execute\"", "\"getmodule\"", "\"getconn\""] {
        assert!(text.contains(name), "INSPECT reply lacks {name}: {text}");
    }

    // #5, #15, #17, #19: getmodule, eval, execute, namespace.
    let getattr = |name: &str| boxed_tuple([local_ref(&root), value(Value::from(name))]);
    let getmodule = remote_ref(&c.call(2, handler::GETATTR, getattr("getmodule")).await?)?;
    let eval = remote_ref(&c.call(7, handler::GETATTR, getattr("eval")).await?)?;
    assert_eq!(
        eval.as_tuple().map(|t| t[0].clone()),
        Some(Value::from("builtins.method"))
    );
    let execute = remote_ref(&c.call(8, handler::GETATTR, getattr("execute")).await?)?;
    let namespace = remote_ref(&c.call(9, handler::GETATTR, getattr("namespace")).await?)?;
    assert_eq!(
        namespace.as_tuple().map(|t| t[0].clone()),
        Some(Value::from("builtins.dict"))
    );

    // 10.2 #21 → #22: ping with the 520-letter alphabet, byte for byte.
    let alphabet = "abcdefghijklmnopqrstuvwxyz".repeat(20);
    assert_eq!(alphabet.len(), ALPHABET_X20_LEN);
    let ping = unhex(&format!(
        "000002160001115a1151115110080f00000208{}0a",
        hex(alphabet.as_bytes())
    ));
    assert_eq!(ping.len(), 540);
    c.send_raw(&ping).await?;
    let echo = c.recv_frame().await?;
    let expected = format!(
        "000002130002115a1151080f00000208{}0a",
        hex(alphabet.as_bytes())
    );
    assert_eq!(hex(&echo), expected);

    // #21/#22 of 10.1: eval('1+1') with seq 10 → exactly 000000060002115a1151520a.
    c.request(
        10,
        handler::CALL,
        boxed_tuple([
            local_ref(&eval),
            value(Value::tuple([Value::from("1+1")])),
            value(Value::tuple([])),
        ]),
    )
    .await?;
    assert_eq!(hex(&c.recv_frame().await?), "000000060002115a1151520a");

    // #23–#28: modules.sys.platform → exactly 0000000d0002115d1151080e056c696e75780a on Linux.
    let sys = remote_ref(
        &c.call(
            11,
            handler::CALL,
            boxed_tuple([
                local_ref(&getmodule),
                value(Value::tuple([Value::from("sys")])),
                value(Value::tuple([])),
            ]),
        )
        .await?,
    )?;
    assert_eq!(
        sys.as_tuple().map(|t| t[0].clone()),
        Some(Value::from("sys"))
    );
    c.request(
        13,
        handler::GETATTR,
        boxed_tuple([local_ref(&sys), value(Value::from("platform"))]),
    )
    .await?;
    let platform = c.recv_frame().await?;
    if cfg!(target_os = "linux") {
        assert_eq!(hex(&platform), "0000000d0002115d1151080e056c696e75780a");
    }

    // #29–#32: execute('x=5') → (1, None); namespace['x'] → (1, 5).
    c.request(
        14,
        handler::CALL,
        boxed_tuple([
            local_ref(&execute),
            value(Value::tuple([Value::from("x=5")])),
            value(Value::tuple([])),
        ]),
    )
    .await?;
    assert_eq!(hex(&c.recv_frame().await?), "000000060002115e1151000a");
    c.request(
        15,
        handler::CALLATTR,
        boxed_tuple([
            local_ref(&namespace),
            value(Value::from("__getitem__")),
            value(Value::tuple([Value::from("x")])),
            value(Value::tuple([])),
        ]),
    )
    .await?;
    assert_eq!(hex(&c.recv_frame().await?), "000000060002115f1151550a");

    // #33/#34: eval('1/0') → the vinegar 4-tuple of a ZeroDivisionError.
    c.request(
        16,
        handler::CALL,
        boxed_tuple([
            local_ref(&eval),
            value(Value::tuple([Value::from("1/0")])),
            value(Value::tuple([])),
        ]),
    )
    .await?;
    let frame = c.recv_frame().await?;
    let head = concat!(
        "0003116013",
        "11080e086275696c74696e73080e115a65726f4469766973696f6e4572726f72",
        "10080e10646976"
    );
    assert!(hex(&frame[4..]).starts_with(head), "{}", hex(&frame));
    let exc = decode_payload(&frame[FRAME_HEADER_LEN..frame.len() - 1])?;
    let parts = exc.body.as_tuple().context("vinegar tuple")?;
    let attrs = parts[2].to_string();
    assert!(
        attrs.contains("(\"_remote_version\", \"6.0.2\")"),
        "{attrs}"
    );
    let tb = parts[3].as_str().context("traceback text")?;
    assert!(tb.starts_with("Traceback (most recent call last):"), "{tb}");
    assert!(
        tb.ends_with("ZeroDivisionError: division by zero\n"),
        "{tb}"
    );

    // 10.2 #25–#38: a list by reference, len, iteration, StopIteration as the bare 1, DEL.
    let list = remote_ref(
        &c.call(
            11,
            handler::CALL,
            boxed_tuple([
                local_ref(&eval),
                value(Value::tuple([Value::from("[1,2]")])),
                value(Value::tuple([])),
            ]),
        )
        .await?,
    )?;
    let callattr = |obj: &Value, name: &str| {
        boxed_tuple([
            local_ref(obj),
            value(Value::from(name)),
            value(Value::tuple([])),
            value(Value::tuple([])),
        ])
    };
    c.request(12, handler::CALLATTR, callattr(&list, "__len__"))
        .await?;
    assert_eq!(hex(&c.recv_frame().await?), "000000060002115c1151520a");
    let iter = remote_ref(
        &c.call(13, handler::CALLATTR, callattr(&list, "__iter__"))
            .await?,
    )?;
    assert_eq!(
        iter.as_tuple().map(|t| t[0].clone()),
        Some(Value::from("builtins.list_iterator"))
    );
    for (seq, expected) in [
        (14, "000000060002115e1151510a"),
        (15, "000000060002115f1151520a"),
    ] {
        c.request(seq, handler::CALLATTR, callattr(&iter, "__next__"))
            .await?;
        assert_eq!(hex(&c.recv_frame().await?), expected);
    }
    c.request(16, handler::CALLATTR, callattr(&iter, "__next__"))
        .await?;
    assert_eq!(hex(&c.recv_frame().await?), "0000000400031160510a");
    let del = |obj: &Value| boxed_tuple([local_ref(obj), value(Value::Int(1))]);
    c.request(17, handler::DEL, del(&iter)).await?;
    assert_eq!(hex(&c.recv_frame().await?), "00000006000211611151000a");
    c.request(18, handler::DEL, del(&list)).await?;
    assert_eq!(hex(&c.recv_frame().await?), "00000006000211621151000a");
    // Released: using it again is a KeyError, as on stock.
    c.request(19, handler::CALLATTR, callattr(&list, "__len__"))
        .await?;
    let gone = c.recv().await?;
    assert_eq!(gone.kind, MessageKind::Exception);
    assert!(gone.body.to_string().contains("KeyError"), "{}", gone.body);

    // A compressed request (stock compresses payloads over 3000 bytes).
    let long_expr = format!("len('{}')", "y".repeat(5000));
    let message = Message {
        kind: MessageKind::Request,
        seq: 20,
        body: Value::tuple([
            Value::Int(handler::CALL),
            boxed_tuple([
                local_ref(&eval),
                value(Value::tuple([Value::from(long_expr.as_str())])),
                value(Value::tuple([])),
            ]),
        ]),
    };
    let mut payload = Vec::new();
    rpyc_protocol::brine::message::encode_payload(&message, &mut payload)?;
    let compressed = deflate(&payload);
    let mut frame = u32::try_from(compressed.len())?.to_be_bytes().to_vec();
    frame.push(1);
    frame.extend(compressed);
    frame.push(b'\n');
    c.send_raw(&frame).await?;
    let reply = c.recv().await?;
    assert_eq!((reply.seq, reply.body), (20, value(Value::Int(5000))));

    // An unknown handler: an exception reply (KeyError), not a hang.
    let unknown = c.call(21, 99, value(Value::tuple([]))).await;
    assert!(
        unknown
            .as_ref()
            .is_err_and(|e| e.to_string().contains("KeyError")),
        "{unknown:?}"
    );

    // #35: CLOSE gets no reply; the server closes the socket.
    c.send_raw(&unhex("000000080001116111521151020a")).await?;
    c.expect_closed().await?;
    assert!(
        server.wait_for_log("client closed the connection", Duration::from_secs(5)),
        "{}",
        server.stderr()
    );
    assert_healthy(&server).await
}

#[tokio::test]
async fn hostile_rpyc_input_leaves_other_clients_alone() -> anyhow::Result<()> {
    let server = TestServer::builder()
        .arg("--max-frame-bytes")
        .arg("65536")
        .start()?;
    let bystander = crate::support::connect(&server).await?;
    let mut stock_bystander = RpycRaw::connect(&server).await?;
    let root = remote_ref(
        &stock_bystander
            .call(0, handler::GETROOT, value(Value::tuple([])))
            .await?,
    )?;

    // Garbage after an RPyC-looking first byte: a frame whose payload is not a message. It is
    // logged; the framing is intact, so the connection goes on.
    let mut garbage = RpycRaw::connect(&server).await?;
    garbage
        .send_raw(&[0, 0, 0, 6, 0, 0xff, 0xde, 0xad, 0xbe, 0xef, 0x07, b'\n'])
        .await?;
    garbage
        .send_raw(&[0, 0, 0, 3, 0, 0x01, 0x07, 0x07, b'\n'])
        .await?;
    assert!(
        server.wait_for_log("malformed RPyC message", Duration::from_secs(5)),
        "{}",
        server.stderr()
    );
    let still = garbage
        .call(5, handler::GETROOT, value(Value::tuple([])))
        .await?;
    remote_ref(&still)?;
    // Then pure noise: whatever length it claims, the connection ends without harm.
    garbage
        .send_raw(&[0x00, 0x13, 0x37, 0xff, 0xee, 0x01, 0x02, 0x03])
        .await?;
    drop(garbage);

    // A length above --max-frame-bytes closes that connection before anything is allocated:
    // mid-stream (the RPyC framing refuses it) and as the very first frame (then it does not
    // even look like RPyC, and the native handshake turns it away).
    let mut oversized = RpycRaw::connect(&server).await?;
    remote_ref(
        &oversized
            .call(0, handler::GETROOT, value(Value::tuple([])))
            .await?,
    )?;
    oversized
        .send_raw(&[0x00, 0xff, 0xff, 0xff, 0x00, 0x01, 0x11])
        .await?;
    oversized.expect_closed().await?;
    assert!(
        server.wait_for_log("frame refused", Duration::from_secs(5)),
        "{}",
        server.stderr()
    );
    let mut oversized_first = RpycRaw::connect(&server).await?;
    oversized_first
        .send_raw(&[0x00, 0xff, 0xff, 0xff, 0x00, 0x01, 0x11, 0x50])
        .await?;
    oversized_first.expect_closed().await?;

    // A zlib bomb: small on the wire, above the limit once inflated.
    let mut bomb = RpycRaw::connect(&server).await?;
    let compressed = deflate(&vec![0u8; 1 << 20]);
    let mut frame = u32::try_from(compressed.len())?.to_be_bytes().to_vec();
    frame.push(1);
    frame.extend(compressed);
    frame.push(b'\n');
    bomb.send_raw(&frame).await?;
    bomb.expect_closed().await?;

    // A stock client that leaves in the middle of a call.
    let mut leaver = RpycRaw::connect(&server).await?;
    let leaver_root = remote_ref(
        &leaver
            .call(0, handler::GETROOT, value(Value::tuple([])))
            .await?,
    )?;
    let eval = remote_ref(
        &leaver
            .call(
                1,
                handler::GETATTR,
                boxed_tuple([local_ref(&leaver_root), value(Value::from("eval"))]),
            )
            .await?,
    )?;
    leaver
        .request(
            2,
            handler::CALL,
            boxed_tuple([
                local_ref(&eval),
                value(Value::tuple([Value::from(
                    "__import__('time').sleep(1) or 1",
                )])),
                value(Value::tuple([])),
            ]),
        )
        .await?;
    drop(leaver);

    // Everyone else still gets right answers.
    assert_eq!(bystander.eval::<i64>("6*7").await?, 42);
    let service = stock_bystander
        .call(
            1,
            handler::CALLATTR,
            boxed_tuple([
                local_ref(&root),
                value(Value::from("get_service_name")),
                value(Value::tuple([])),
                value(Value::tuple([])),
            ]),
        )
        .await?;
    assert_eq!(service, value(Value::from("SLAVE")));
    let mut fresh = RpycRaw::connect(&server).await?;
    remote_ref(
        &fresh
            .call(0, handler::GETROOT, value(Value::tuple([])))
            .await?,
    )?;
    assert_healthy(&server).await
}

#[tokio::test]
async fn protocol_flag_restricts_the_port() -> anyhow::Result<()> {
    let native_only = TestServer::builder()
        .arg("--protocol")
        .arg("native")
        .start()?;
    let mut stock = RpycRaw::connect(&native_only).await?;
    stock
        .send_raw(&unhex("000000080001115011531151020a"))
        .await?;
    stock.expect_closed().await?;
    assert_healthy(&native_only).await?;

    let rpyc_only = TestServer::builder()
        .arg("--protocol")
        .arg("rpyc")
        .start()?;
    let mut stock = RpycRaw::connect(&rpyc_only).await?;
    remote_ref(
        &stock
            .call(0, handler::GETROOT, value(Value::tuple([])))
            .await?,
    )?;

    // With a token, stock clients (which cannot present one) are refused.
    let dir = std::env::temp_dir().join(format!("rpyc-compat-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token\n")?;
    let with_token = TestServer::builder()
        .arg("--token-file")
        .arg(token_file.display().to_string())
        .start()?;
    let mut stock = RpycRaw::connect(&with_token).await?;
    stock
        .send_raw(&unhex("000000080001115011531151020a"))
        .await?;
    stock.expect_closed().await?;
    assert!(
        with_token.wait_for_log("stock RPyC client refused", Duration::from_secs(5)),
        "{}",
        with_token.stderr()
    );
    let _ = std::fs::remove_dir_all(&dir);
    // Brine itself is exercised elsewhere; here only that the module is reachable.
    assert_eq!(brine::to_vec(&Value::None)?, [0]);
    Ok(())
}
