//! The typed route (`codec::decode_response_as`) against the `Value` route (`decode`, then
//! `Value::deserialize_into`): for any result and any of a range of target types, both give the
//! same answer, or the typed route hands over to the `Value` route (`NeedsValue`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;

use proptest::prelude::*;
use rpyc_protocol::codec::{self, TypedReply};
use rpyc_protocol::{Message, NetRef, NetRefId, RequestId, ServerError, Value};
use serde::Deserialize;
use serde::de::DeserializeOwned;

fn payload(result: Result<Value, ServerError>) -> Vec<u8> {
    codec::encode(&Message::Response {
        id: RequestId(77_000),
        result,
    })
    .expect("encodes")
    .to_vec()
}

/// Both routes, for one value and one type: the typed one must agree with the `Value` one.
/// Returns whether the typed route answered by itself.
fn agree<T: DeserializeOwned + PartialEq + Debug>(value: &Value) -> bool {
    let bytes = payload(Ok(value.clone()));
    assert_eq!(codec::response_id(&bytes), Some(RequestId(77_000)));
    let via_value = value.clone().deserialize_into::<T>();
    match codec::decode_response_as::<T>(&bytes).expect("well formed") {
        TypedReply::Ok(got) => {
            assert_eq!(
                Ok(&got),
                via_value.as_ref(),
                "{value:?} as {}",
                std::any::type_name::<T>()
            );
            true
        }
        TypedReply::NeedsValue => {
            // Only for what the typed route does not read: a mismatch, a reference, a `Value`.
            assert!(
                via_value.is_err()
                    || contains_ref(value)
                    || std::any::type_name::<T>().contains("Value"),
                "{value:?} as {}: typed route gave up, Value route gave {via_value:?}",
                std::any::type_name::<T>()
            );
            false
        }
        TypedReply::Err(e) => panic!("an Ok response read as an error: {e}"),
    }
}

fn contains_ref(v: &Value) -> bool {
    match v {
        Value::Ref(_) => true,
        Value::Tuple(items) | Value::List(items) | Value::Set(items) | Value::FrozenSet(items) => {
            items.iter().any(contains_ref)
        }
        Value::Dict(entries) => entries
            .iter()
            .any(|(k, v)| contains_ref(k) || contains_ref(v)),
        _ => false,
    }
}

#[derive(Debug, PartialEq, Deserialize)]
enum Shape {
    Empty,
    Point(i64, i64),
    Named { name: String },
    Wrapped(f64),
}

#[derive(Debug, PartialEq, Deserialize)]
struct Record {
    a: i64,
    #[serde(default)]
    b: Option<String>,
}

fn all_types(v: &Value) {
    agree::<i64>(v);
    agree::<u8>(v);
    agree::<u128>(v);
    agree::<i128>(v);
    agree::<f64>(v);
    agree::<bool>(v);
    agree::<String>(v);
    agree::<Option<i64>>(v);
    agree::<()>(v);
    agree::<Vec<i64>>(v);
    agree::<Vec<Option<String>>>(v);
    agree::<(i64, String)>(v);
    agree::<(f64, f64)>(v);
    agree::<serde_bytes::ByteBuf>(v);
    agree::<HashMap<String, i64>>(v);
    agree::<BTreeMap<i64, Vec<i64>>>(v);
    agree::<Shape>(v);
    agree::<Record>(v);
    agree::<Value>(v);
    agree::<Vec<Value>>(v);
    agree::<serde_json::Value>(v);
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::None),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(250),
            Just(251),
            Just(65_536),
            Just(i64::MIN)
        ]
        .prop_map(Value::Int),
        any::<u128>().prop_map(|u| Value::BigInt(u.to_string())),
        any::<i128>().prop_map(|i| Value::BigInt(i.to_string())),
        Just(Value::BigInt("1".repeat(50))),
        any::<f64>().prop_map(Value::Float),
        (any::<f64>(), any::<f64>()).prop_map(|(re, im)| Value::Complex { re, im }),
        "[a-zé✓]{0,8}".prop_map(Value::Str),
        prop_oneof![
            Just("Empty"),
            Just("Point"),
            Just("Named"),
            Just("a"),
            Just("b")
        ]
        .prop_map(|s| Value::Str(s.into())),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::bytes),
        (any::<u64>(), "[a-z.]{1,10}").prop_map(|(id, t)| Value::Ref(NetRef {
            id: NetRefId(id),
            type_name: t
        })),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Tuple),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Set),
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::FrozenSet),
            proptest::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(Value::Dict),
            // Shapes the enum and struct targets read: `{"Variant": data}`, `{"a": 1, ...}`.
            (
                prop_oneof![Just("Point"), Just("Named"), Just("Wrapped"), Just("Empty")],
                inner.clone()
            )
                .prop_map(|(k, v)| Value::Dict(vec![(Value::Str(k.into()), v)])),
            (any::<i64>(), proptest::option::of("[a-z]{0,4}")).prop_map(|(a, b)| {
                let mut entries = vec![(Value::Str("a".into()), Value::Int(a))];
                if let Some(b) = b {
                    entries.push((Value::Str("b".into()), Value::Str(b)));
                }
                Value::Dict(entries)
            }),
            proptest::collection::vec(any::<i64>(), 0..20)
                .prop_map(|v| Value::List(v.into_iter().map(Value::Int).collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn both_routes_agree(v in value()) {
        all_types(&v);
    }

    /// A `Value` converted into a `Value`, alone or inside containers, is the same value (it
    /// is handed over whole, not rebuilt: see `Value`'s `deserialize_enum`).
    #[test]
    fn values_convert_into_themselves(v in value()) {
        prop_assert_eq!(v.clone().deserialize_into::<Value>().ok(), Some(v.clone()));
        let list = Value::List(vec![v.clone(), Value::Int(7), v.clone()]);
        prop_assert_eq!(
            list.deserialize_into::<Vec<Value>>().ok(),
            Some(vec![v.clone(), Value::Int(7), v.clone()])
        );
        let pair = Value::Tuple(vec![Value::Str("k".into()), v.clone()]);
        prop_assert_eq!(pair.deserialize_into::<(String, Value)>().ok(), Some(("k".to_owned(), v.clone())));
        let dict = Value::Dict(vec![(Value::Str("a".into()), v.clone())]);
        let got = dict.deserialize_into::<std::collections::HashMap<String, Value>>().ok();
        prop_assert_eq!(got.and_then(|mut m| m.remove("a")), Some(v));
    }

    #[test]
    fn damaged_payloads_are_errors_or_agree(v in value(), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()) {
        let bytes = payload(Ok(v));
        // Cut short: never a panic; an error or a hand-over, never a wrong value.
        let truncated = &bytes[..cut.index(bytes.len())];
        let _ = codec::decode_response_as::<serde_json::Value>(truncated);
        // One byte changed: whatever the typed route accepts, the Value route reads alike.
        let mut damaged = bytes.clone();
        let at = flip.0.index(damaged.len());
        damaged[at] ^= flip.1 | 1;
        if let Ok(TypedReply::Ok(got)) = codec::decode_response_as::<serde_json::Value>(&damaged) {
            match codec::decode(&damaged) {
                Ok(Message::Response { result: Ok(value), .. }) => {
                    prop_assert_eq!(Ok(got), value.deserialize_into::<serde_json::Value>());
                }
                other => prop_assert!(false, "typed route accepted what decode refuses: {:?}", other),
            }
        }
    }
}

#[test]
fn large_results_and_the_answer_for_each_case() {
    let ints = Value::List((0..100_000).map(Value::Int).collect());
    assert!(
        agree::<Vec<i64>>(&ints),
        "a list of ints is read by the typed route"
    );
    assert!(agree::<Vec<u32>>(&ints));
    assert!(
        !agree::<Vec<u8>>(&ints),
        "out of range: handed over for the error"
    );
    let with_ref = Value::List(vec![
        Value::Int(1),
        Value::Ref(NetRef {
            id: NetRefId(9),
            type_name: "builtins.object".into(),
        }),
    ]);
    assert!(
        !agree::<Vec<serde_json::Value>>(&with_ref),
        "a reference needs the Value route"
    );
    assert!(
        !agree::<Value>(&Value::Int(1)),
        "a Value is built by the Value route"
    );

    // Errors come through as errors.
    let bytes = payload(Err(ServerError::Cancelled));
    assert!(matches!(
        codec::decode_response_as::<i64>(&bytes),
        Ok(TypedReply::Err(ServerError::Cancelled))
    ));
    // Not a response, trailing bytes, nonsense: errors.
    let ping = codec::encode(&Message::Ping { id: RequestId(1) }).expect("encodes");
    assert!(codec::decode_response_as::<i64>(&ping).is_err());
    assert_eq!(codec::response_id(&ping), None);
    let mut trailing = payload(Ok(Value::Int(5)));
    trailing.push(0);
    assert!(codec::decode_response_as::<i64>(&trailing).is_err());
    assert!(codec::decode_response_as::<i64>(&[]).is_err());
    assert!(
        codec::decode_response_as::<Vec<i64>>(&[
            2, 1, 0, 9, 253, 255, 255, 255, 255, 255, 255, 255, 255
        ])
        .is_err()
    );
}

#[test]
fn nesting_is_limited_as_on_the_value_route() {
    // 400 nested lists: refused, not a stack overflow.
    let mut bytes = vec![2, 1, 0];
    for _ in 0..400 {
        bytes.extend_from_slice(&[9, 1]);
    }
    bytes.push(0);
    // The typed route stops at the limit and hands over; the Value route refuses.
    assert!(matches!(
        codec::decode_response_as::<serde_json::Value>(&bytes),
        Ok(TypedReply::NeedsValue)
    ));
    assert!(codec::decode(&bytes).is_err());
}
