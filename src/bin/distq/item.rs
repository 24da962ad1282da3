//! Items of any shape, as the shell commands see them: a task record, a result record, or
//! any other value a program put, and how each is written as one JSON line (PROTOCOL.md §11).

use base64::Engine as _;
use distq::exec::{ResultRecord, TaskRecord};
use serde_json::{Map, Value as Json};
use serde_value::Value;

/// One item taken from a queue, decoded without knowing its type; it encodes back to the
/// same value, so `dead kick` can move items it does not understand.
pub type Item = Value;

/// What an item is.
pub enum Kind {
    Task(Box<TaskRecord>),
    Result,
    Other,
}

/// Tells a record from other values by its keys: a map with `v` and `id` is a record, with
/// `status` a result record.
pub fn classify(item: &Item) -> Kind {
    let Value::Map(map) = item else {
        return Kind::Other;
    };
    let has = |key: &str| map.contains_key(&Value::String(key.to_owned()));
    if !(has("v") && has("id")) {
        return Kind::Other;
    }
    if has("status") {
        match item.clone().deserialize_into::<ResultRecord>() {
            Ok(_) => Kind::Result,
            Err(_) => Kind::Other,
        }
    } else {
        match item.clone().deserialize_into::<TaskRecord>() {
            Ok(t) => Kind::Task(Box::new(t)),
            Err(_) => Kind::Other,
        }
    }
}

/// Base64 as written for a byte field that is not UTF-8.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes `input_b64` and the like.
pub fn unb64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(text)
}

/// A whole item as JSON: a top-level byte string is text when it is UTF-8, else
/// `{"payload_b64": ...}`; inside maps, a byte field is text or `<key>_b64`.
pub fn to_json(item: &Item) -> Json {
    match item {
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(text) => Json::String(text.to_owned()),
            Err(_) => single("payload_b64", Json::String(b64(b))),
        },
        other => value(other),
    }
}

/// The JSON `get` prints for a task record: its input, as the JSON it holds when it is one
/// JSON document (what `put --jsonl` stored), else as text or `{"input_b64": ...}`.
pub fn input_json(input: &[u8]) -> Json {
    match std::str::from_utf8(input) {
        Ok(text) => match serde_json::from_str::<Json>(text) {
            Ok(json) => json,
            Err(_) => Json::String(text.to_owned()),
        },
        Err(_) => single("input_b64", Json::String(b64(input))),
    }
}

fn single(key: &str, value: Json) -> Json {
    let mut map = Map::new();
    map.insert(key.to_owned(), value);
    Json::Object(map)
}

fn value(v: &Value) -> Json {
    match v {
        Value::Bool(b) => Json::Bool(*b),
        Value::U8(n) => Json::from(*n),
        Value::U16(n) => Json::from(*n),
        Value::U32(n) => Json::from(*n),
        Value::U64(n) => Json::from(*n),
        Value::I8(n) => Json::from(*n),
        Value::I16(n) => Json::from(*n),
        Value::I32(n) => Json::from(*n),
        Value::I64(n) => Json::from(*n),
        Value::F32(n) => Json::from(f64::from(*n)),
        Value::F64(n) => Json::from(*n),
        Value::Char(c) => Json::String(c.to_string()),
        Value::String(s) => Json::String(s.clone()),
        Value::Unit | Value::Option(None) => Json::Null,
        Value::Option(Some(inner)) | Value::Newtype(inner) => value(inner),
        Value::Seq(items) => Json::Array(items.iter().map(value).collect()),
        // Bytes outside a map keep their key-less form.
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(text) => Json::String(text.to_owned()),
            Err(_) => single("b64", Json::String(b64(b))),
        },
        Value::Map(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    Value::String(s) => s.clone(),
                    // JSON keys are text: any other key is written as its JSON.
                    other => value(other).to_string(),
                };
                match v {
                    Value::Bytes(b) => match std::str::from_utf8(b) {
                        Ok(text) => out.insert(key, Json::String(text.to_owned())),
                        Err(_) => out.insert(format!("{key}_b64"), Json::String(b64(b))),
                    },
                    other => out.insert(key, value(other)),
                };
            }
            Json::Object(out)
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use std::collections::BTreeMap;

    fn item<T: serde::Serialize>(v: &T) -> Item {
        serde_value::to_value(v).unwrap()
    }

    #[test]
    fn byte_fields_are_text_only_when_utf8() {
        let mut r = ResultRecord::for_task(&TaskRecord::new("a", "x"), distq::exec::Status::Ok);
        r.stdout = b"hi\n".to_vec();
        r.stderr = vec![0xff, 0];
        let json = to_json(&item(&r));
        assert_eq!(json["stdout"], "hi\n");
        assert_eq!(json["stderr_b64"], "/wA=");
        assert!(json.get("stderr").is_none());
        assert_eq!(json["status"], "ok");
    }

    #[test]
    fn records_are_told_apart_from_other_maps() {
        assert!(matches!(
            classify(&item(&TaskRecord::new("a", "x"))),
            Kind::Task(_)
        ));
        let r = ResultRecord::for_task(&TaskRecord::new("a", "x"), distq::exec::Status::Failed);
        assert!(matches!(classify(&item(&r)), Kind::Result));
        let mail: BTreeMap<&str, &str> = [("to", "a@b")].into();
        assert!(matches!(classify(&item(&mail)), Kind::Other));
        assert!(matches!(classify(&item(&7u32)), Kind::Other));
    }

    #[test]
    fn inputs_print_as_the_json_they_hold() {
        assert_eq!(input_json(b"{\"to\":\"a@b\"}\n")["to"], "a@b");
        assert_eq!(input_json(b"plain text"), "plain text");
        assert_eq!(input_json(&[0xff])["input_b64"], "/w==");
    }

    #[test]
    fn top_level_bytes() {
        let bytes = serde_bytes::ByteBuf::from(vec![0xfe]);
        assert_eq!(to_json(&item(&bytes))["payload_b64"], "/g==");
    }
}
