//! Property tests of the decoder: no input makes it panic, hang or allocate wildly, and every
//! damaged frame is an error (or, rarely, another valid message), never a crash.
//!
//! These run on stable within the normal test run; the number of cases is fixed so CI time is
//! bounded.

use proptest::prelude::*;
use rpyc_protocol::{Message, Op, RequestId, ReturnMode, Value, codec};

fn seeds() -> Vec<Vec<u8>> {
    let messages = [
        Message::Request {
            id: RequestId(1),
            op: Op::Eval {
                expr: "1+1".into(),
                mode: ReturnMode::Value,
            },
        },
        Message::Request {
            id: RequestId(300),
            op: Op::Call {
                obj: rpyc_protocol::NetRefId(5),
                args: rpyc_protocol::Args {
                    positional: vec![Value::List(vec![Value::Int(1), Value::Str("x".into())])],
                    keyword: vec![("k".into(), Value::bytes(vec![1, 2, 3]))],
                },
                mode: ReturnMode::Auto,
            },
        },
        Message::Response {
            id: RequestId(2),
            result: Ok(Value::Dict(vec![(Value::Int(1), Value::Float(2.0))])),
        },
        Message::Release {
            ids: vec![rpyc_protocol::NetRefId(1)],
        },
    ];
    messages
        .iter()
        .map(|m| codec::encode(m).map(|b| b.to_vec()).unwrap_or_default())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode(&bytes);
        let _ = codec::peek_request_id(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(
        seed in 0usize..4,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut bytes = seeds()[seed].clone();
        for (at, value) in flips {
            let len = bytes.len();
            bytes[at % len] = value;
        }
        let keep = cut % (bytes.len() + 1);
        bytes.truncate(keep);
        if let Ok(message) = codec::decode(&bytes) {
            // Whatever decoded is a real message: it survives its own round trip. (The bytes
            // may differ: bincode accepts non-minimal varints.)
            let again = codec::encode(&message).ok().and_then(|b| codec::decode(&b).ok());
            prop_assert_eq!(again, Some(message));
        }
    }

    #[test]
    fn huge_claimed_lengths_are_refused_quickly(
        variant in prop::sample::select(vec![0u8, 4, 7]),
        claimed in (1u64 << 32)..u64::MAX,
    ) {
        // A variant whose first field is a string or a list (Welcome, Release, Goodbye), then
        // a varint u64 length (bincode's 0xFD prefix) claiming far more than present: must
        // fail without trying to allocate it.
        let mut bytes = vec![variant, 0xFD];
        bytes.extend_from_slice(&claimed.to_le_bytes());
        prop_assert!(codec::decode(&bytes).is_err());
    }
}
