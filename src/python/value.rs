//! Plain Python values as queue items: the same CBOR a native client's `Queue<T>` puts and
//! gets, so Python and Rust clients share queues.
//!
//! Python → CBOR: `None` null, `bool`, `int` (64 bits), `float`, `str` (and Python 2
//! `unicode`) text, `bytes` a byte string, a Python 2 `str` text when it is UTF-8 and a byte
//! string otherwise, `list` and `tuple` arrays, `dict` a map (in its order). CBOR → Python:
//! the reverse, an array always a `list`.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use super::pickle::Value;

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::None => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(n) => s.serialize_i64(*n),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Text(t) => s.serialize_str(t),
            Value::Bytes(b) => s.serialize_bytes(b),
            Value::Str2(b) => match std::str::from_utf8(b) {
                Ok(t) => s.serialize_str(t),
                Err(_) => s.serialize_bytes(b),
            },
            Value::List(items) | Value::Tuple(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Object(name) => Err(serde::ser::Error::custom(format!(
                "{name} is not plain data"
            ))),
            Value::Dict(pairs) => {
                let mut map = s.serialize_map(Some(pairs.len()))?;
                for (k, v) in pairs {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "plain data: null, a bool, a 64-bit integer, a float, text, bytes, an array or a map",
        )
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Int(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        i64::try_from(n).map(Value::Int).map_err(|_| {
            E::custom(format!(
                "the integer {n} is beyond what a Python client is given (64-bit signed)"
            ))
        })
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(f))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Text(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        Ok(Value::Text(s))
    }

    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(b.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, b: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(b))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut pairs = Vec::new();
        while let Some(pair) = map.next_entry()? {
            pairs.push(pair);
        }
        Ok(Value::Dict(pairs))
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::codec;

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    /// The seed's data: a task is a plain integer, a result the plain string; they cross
    /// between a Python client and a native `Queue<T>` unchanged.
    #[test]
    fn the_seeds_tasks_and_results_cross_between_python_and_rust() {
        let task = codec::encode(&Value::Int(7)).unwrap();
        assert_eq!(task, codec::encode(&7u64).unwrap());
        assert_eq!(codec::decode::<u64>(&task).unwrap(), 7);
        let result = codec::encode(&"7 * 7 = 49".to_string()).unwrap();
        assert_eq!(codec::decode::<Value>(&result).unwrap(), text("7 * 7 = 49"));
    }

    #[test]
    fn plain_values_round_trip_and_python2_str_becomes_text_or_bytes() {
        let v = Value::Dict(vec![
            (text("n"), Value::Int(-3)),
            (
                text("xs"),
                Value::Tuple(vec![Value::Float(0.5), Value::None, Value::Bool(true)]),
            ),
            (Value::Int(1), Value::Bytes(vec![0, 255])),
            (text("b"), Value::Str2(b"caf\xc3\xa9".to_vec())),
            (text("raw"), Value::Str2(vec![0xFF])),
        ]);
        let back = codec::decode::<Value>(&codec::encode(&v).unwrap()).unwrap();
        assert_eq!(
            back,
            Value::Dict(vec![
                (text("n"), Value::Int(-3)),
                (
                    text("xs"),
                    Value::List(vec![Value::Float(0.5), Value::None, Value::Bool(true)])
                ),
                (Value::Int(1), Value::Bytes(vec![0, 255])),
                (text("b"), text("café")),
                (text("raw"), Value::Bytes(vec![0xFF])),
            ])
        );
        // A native u64 beyond i64 is refused, not wrapped.
        assert!(codec::decode::<Value>(&codec::encode(&u64::MAX).unwrap()).is_err());
    }
}
