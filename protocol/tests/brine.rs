//! Brine against stock RPyC: every vector in `data/brine_vectors.json` was made by
//! `rpyc.core.brine.dump` 6.0.2 (`data/make_brine_vectors.py`). Our encoder must produce the same
//! bytes, and our decoder must read them back to the same value.

use rpyc_protocol::brine::{self, Value};
use serde_json::Value as Json;

const VECTORS: &str = include_str!("data/brine_vectors.json");

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 {
        return Err(format!("odd hex length {}", s.len()));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

fn float(bits: &Json) -> Result<f64, String> {
    let raw = unhex(bits.as_str().ok_or("float bits must be a string")?)?;
    let raw: [u8; 8] = raw.try_into().map_err(|_| "float bits must be 8 bytes")?;
    Ok(f64::from_be_bytes(raw))
}

/// Rebuilds a value from the typed tree the Python script wrote.
fn value(json: &Json) -> Result<Value, String> {
    let parts = json
        .as_array()
        .ok_or_else(|| format!("not a typed value: {json}"))?;
    let kind = parts
        .first()
        .and_then(Json::as_str)
        .ok_or_else(|| format!("no type in {json}"))?;
    let arg = |i: usize| {
        parts
            .get(i)
            .ok_or_else(|| format!("missing field in {json}"))
    };
    let items = |j: &Json| -> Result<Vec<Value>, String> {
        j.as_array()
            .ok_or_else(|| format!("items must be a list in {json}"))?
            .iter()
            .map(value)
            .collect()
    };
    Ok(match kind {
        "none" => Value::None,
        "ellipsis" => Value::Ellipsis,
        "notimplemented" => Value::NotImplemented,
        "bool" => Value::Bool(arg(1)?.as_bool().ok_or("bool")?),
        "int" => {
            let text = arg(1)?.as_str().ok_or("int text")?;
            match text.parse::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => Value::BigInt(text.to_owned()),
            }
        }
        "float" => Value::Float(float(arg(1)?)?),
        "complex" => Value::Complex {
            re: float(arg(1)?)?,
            im: float(arg(2)?)?,
        },
        "bytes" => Value::Bytes(unhex(arg(1)?.as_str().ok_or("bytes hex")?)?),
        "str" => Value::Str(arg(1)?.as_str().ok_or("str")?.to_owned()),
        "tuple" => Value::Tuple(items(arg(1)?)?),
        "frozenset" => Value::FrozenSet(items(arg(1)?)?),
        "slice" => {
            let parts: [Value; 3] = items(arg(1)?)?
                .try_into()
                .map_err(|_| "a slice has three parts")?;
            Value::Slice(Box::new(parts))
        }
        other => return Err(format!("unknown type {other:?}")),
    })
}

/// Equality that treats NaN as equal to itself (bit patterns must match exactly anyway).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::Complex { re: a, im: b }, Value::Complex { re: c, im: d }) => {
            a.to_bits() == c.to_bits() && b.to_bits() == d.to_bits()
        }
        (Value::Tuple(x), Value::Tuple(y)) | (Value::FrozenSet(x), Value::FrozenSet(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Slice(x), Value::Slice(y)) => x.iter().zip(y.iter()).all(|(a, b)| same(a, b)),
        _ => a == b,
    }
}

#[test]
fn encoder_and_decoder_match_stock_brine() -> Result<(), String> {
    let doc: Json = serde_json::from_str(VECTORS).map_err(|e| e.to_string())?;
    assert_eq!(doc["rpyc_version"], "6.0.2");
    let vectors = doc["vectors"].as_array().ok_or("no vectors")?;
    assert!(vectors.len() > 60, "only {} vectors", vectors.len());
    let mut failures = Vec::new();
    for v in vectors {
        let name = v["name"].as_str().unwrap_or("?");
        let expected = unhex(v["hex"].as_str().ok_or("hex")?)?;
        let value = value(&v["value"])?;
        match brine::to_vec(&value) {
            Ok(bytes) if bytes == expected => {}
            Ok(bytes) => failures.push(format!(
                "{name}: encoded {} bytes, stock made {} (first difference at {:?})",
                bytes.len(),
                expected.len(),
                bytes.iter().zip(&expected).position(|(a, b)| a != b)
            )),
            Err(e) => failures.push(format!("{name}: cannot encode: {e}")),
        }
        match brine::decode(&expected) {
            Ok(decoded) if same(&decoded, &value) => {}
            Ok(decoded) => failures.push(format!("{name}: decoded to {decoded}")),
            Err(e) => failures.push(format!("{name}: cannot decode: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn truncated_vectors_are_errors_not_panics() -> Result<(), String> {
    let doc: Json = serde_json::from_str(VECTORS).map_err(|e| e.to_string())?;
    for v in doc["vectors"].as_array().ok_or("no vectors")? {
        let bytes = unhex(v["hex"].as_str().ok_or("hex")?)?;
        // Every proper prefix of a value is incomplete.
        for cut in [0, bytes.len() / 2, bytes.len().saturating_sub(1)] {
            if cut < bytes.len() {
                assert!(brine::decode(&bytes[..cut]).is_err(), "{}", v["name"]);
            }
        }
    }
    Ok(())
}
