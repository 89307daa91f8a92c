//! Round trips of every message variant, and framing over split, oversized and truncated input.

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rpyc_protocol::{
    Args, CompareOp, Message, NetRef, NetRefId, Op, ProtocolError, RemoteException, RequestId,
    ReturnMode, ServerError, ServerInfo, Value, codec,
};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Decoder, FramedRead, FramedWrite};

fn obj() -> NetRefId {
    NetRefId(7)
}

fn every_value() -> Value {
    Value::List(vec![
        Value::None,
        Value::Bool(true),
        Value::Int(i64::MIN),
        Value::BigInt("-123456789012345678901234567890".into()),
        Value::Float(f64::MAX),
        Value::Complex { re: 1.5, im: -2.0 },
        Value::Str("héllo".into()),
        Value::bytes(vec![0, 255, 10]),
        Value::Tuple(vec![Value::Int(1)]),
        Value::Dict(vec![(Value::Str("k".into()), Value::List(vec![]))]),
        Value::Set(vec![Value::Int(3)]),
        Value::FrozenSet(vec![Value::Str("f".into())]),
        Value::Ref(NetRef {
            id: NetRefId(u64::MAX),
            type_name: "builtins.object".into(),
        }),
    ])
}

fn every_op() -> Vec<Op> {
    let args = Args {
        positional: vec![every_value()],
        keyword: vec![("sep".into(), Value::Str("/".into()))],
    };
    vec![
        Op::Execute {
            code: "x = 1".into(),
        },
        Op::Eval {
            expr: "x".into(),
            mode: ReturnMode::Auto,
        },
        Op::Import {
            name: "os.path".into(),
        },
        Op::Namespace,
        Op::Builtins,
        Op::GetAttr {
            obj: obj(),
            name: "a".into(),
            mode: ReturnMode::Ref,
        },
        Op::SetAttr {
            obj: obj(),
            name: "a".into(),
            value: Value::Int(1),
        },
        Op::DelAttr {
            obj: obj(),
            name: "a".into(),
        },
        Op::Call {
            obj: obj(),
            args: args.clone(),
            mode: ReturnMode::Value,
        },
        Op::CallMethod {
            obj: obj(),
            name: "join".into(),
            args,
            mode: ReturnMode::Value,
        },
        Op::GetItem {
            obj: obj(),
            key: Value::Int(0),
            mode: ReturnMode::Auto,
        },
        Op::SetItem {
            obj: obj(),
            key: Value::Int(0),
            value: Value::None,
        },
        Op::DelItem {
            obj: obj(),
            key: Value::Int(0),
        },
        Op::Len { obj: obj() },
        Op::Contains {
            obj: obj(),
            item: Value::Int(1),
        },
        Op::Iter {
            obj: obj(),
            batch: 64,
            mode: ReturnMode::Value,
        },
        Op::Next {
            iter: obj(),
            batch: 64,
            mode: ReturnMode::Ref,
        },
        Op::Repr { obj: obj() },
        Op::Str { obj: obj() },
        Op::Dir { obj: obj() },
        Op::Compare {
            obj: obj(),
            op: CompareOp::Ge,
            other: Value::Int(2),
        },
        Op::Hash { obj: obj() },
        Op::Obtain { obj: obj() },
    ]
}

fn every_message() -> Vec<Message> {
    let mut all: Vec<Message> = every_op()
        .into_iter()
        .enumerate()
        .map(|(i, op)| Message::Request {
            id: RequestId(i as u64),
            op,
        })
        .collect();
    let exc = RemoteException {
        type_name: "ZeroDivisionError".into(),
        message: "division by zero".into(),
        traceback: "Traceback (most recent call last):\n...".into(),
        mro: vec!["ArithmeticError".into(), "Exception".into()],
    };
    for result in [
        Ok(every_value()),
        Err(ServerError::Exception(Box::new(exc))),
        Err(ServerError::UnknownReference(NetRefId(9))),
        Err(ServerError::InvalidRequest("nope".into())),
        Err(ServerError::Cancelled),
        Err(ServerError::ResultTooLarge { size: 10, max: 5 }),
    ] {
        all.push(Message::Response {
            id: RequestId(99),
            result,
        });
    }
    all.extend([
        Message::Welcome(ServerInfo {
            server: "rpyc-classic 0.1.0".into(),
            python_version: "3.11.7".into(),
            connection_id: 3,
        }),
        Message::Cancel { id: RequestId(1) },
        Message::Release {
            ids: vec![NetRefId(1), NetRefId(2)],
        },
        Message::Ping { id: RequestId(2) },
        Message::Pong { id: RequestId(2) },
        Message::Goodbye {
            reason: "shutdown".into(),
        },
        Message::Challenge { nonce: [3; 32] },
        Message::Authenticate { proof: [4; 32] },
    ]);
    all
}

#[test]
fn every_message_round_trips() -> Result<(), ProtocolError> {
    for message in every_message() {
        let payload = codec::encode(&message)?;
        assert_eq!(codec::decode(&payload)?, message);
        let mut frame = BytesMut::new();
        codec::encode_frame(&message, codec::DEFAULT_MAX_FRAME_BYTES, &mut frame)?;
        assert_eq!(&frame[4..], &payload[..]);
        assert_eq!(
            u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize,
            payload.len()
        );
    }
    Ok(())
}

#[test]
fn request_id_is_found_in_a_damaged_request() -> Result<(), ProtocolError> {
    let payload = codec::encode(&Message::Request {
        id: RequestId(4242),
        op: Op::Namespace,
    })?;
    assert_eq!(codec::peek_request_id(&payload), Some(RequestId(4242)));
    let mut damaged = payload[..payload.len() - 1].to_vec();
    damaged.push(200);
    assert!(codec::decode(&damaged).is_err());
    assert_eq!(codec::peek_request_id(&damaged), Some(RequestId(4242)));
    let pong = codec::encode(&Message::Pong { id: RequestId(1) })?;
    assert_eq!(codec::peek_request_id(&pong), None);
    Ok(())
}

#[test]
fn bad_payloads_are_errors_not_panics() -> Result<(), ProtocolError> {
    let payload = codec::encode(&Message::Ping { id: RequestId(5) })?;
    let mut trailing = payload.to_vec();
    trailing.push(0);
    assert!(matches!(
        codec::decode(&trailing),
        Err(ProtocolError::TrailingBytes { extra: 1, .. })
    ));
    assert!(codec::decode(&payload[..payload.len() - 1]).is_err());
    assert!(codec::decode(&[250, 1, 2, 3]).is_err());
    assert!(codec::decode(&[]).is_err());
    // A length inside the payload that claims far more than the frame holds.
    let huge_vec = [4u8, 251, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    assert!(codec::decode(&huge_vec).is_err());
    // Every truncation of every message fails cleanly.
    for message in every_message() {
        let payload = codec::encode(&message)?;
        for cut in 0..payload.len() {
            assert!(
                codec::decode(&payload[..cut]).is_err(),
                "{message:?} cut at {cut}"
            );
        }
    }
    Ok(())
}

#[test]
fn oversized_encode_is_refused_and_leaves_buffer_untouched() {
    let big = Message::Response {
        id: RequestId(1),
        result: Ok(Value::bytes(vec![0; 1000])),
    };
    let mut dst = BytesMut::from(&b"keep"[..]);
    let err = codec::encode_frame(&big, 100, &mut dst).expect_err("too large");
    assert!(matches!(err, ProtocolError::TooLarge { max: 100, .. }));
    assert_eq!(&dst[..], b"keep");
}

#[tokio::test]
async fn frames_split_across_reads_reassemble() -> Result<(), Box<dyn std::error::Error>> {
    let (client, server) = tokio::io::duplex(8);
    let messages = every_message();
    let expected = messages.clone();
    let writer = tokio::spawn(async move {
        let mut sink = FramedWrite::new(client, codec::framing(1 << 20));
        for m in messages {
            sink.send(codec::encode(&m)?).await?;
        }
        Ok::<_, ProtocolError>(())
    });
    let mut frames = FramedRead::new(server, codec::framing(1 << 20));
    for want in expected {
        let frame = frames.next().await.ok_or("stream ended early")??;
        assert_eq!(codec::decode(&frame.payload)?, want);
    }
    writer.await??;
    Ok(())
}

#[tokio::test]
async fn oversized_length_is_refused_before_allocating() {
    let mut codec = codec::framing(1024);
    // Claims 4 GiB - 1 of payload; only the 4 length bytes are present.
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
    let err = codec.decode(&mut buf).expect_err("oversized");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(buf.capacity() < 1 << 20);
}

#[tokio::test]
async fn eof_in_the_middle_of_a_frame_is_an_error() -> Result<(), Box<dyn std::error::Error>> {
    // Cut in the payload, and right after the length prefix.
    for sent in [&[0, 0, 0, 10, 1, 2, 3][..], &[0, 0, 0, 10]] {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(sent).await?;
        drop(client);
        let mut frames = FramedRead::new(server, codec::framing(1024));
        let got = frames.next().await.ok_or("no item")?;
        assert!(
            got.is_err(),
            "truncated frame {sent:?} must be an error, got {got:?}"
        );
    }
    Ok(())
}
