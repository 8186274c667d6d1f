//! Strict JSON input: the one extractor every request body goes through, and the
//! check that refuses an object with a repeated key (serde would keep the last value
//! and drop the others without a word).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess};

use crate::AppState;
use crate::error::ApiError;

/// A JSON body whose rejections speak the API's error model, and which refuses a
/// repeated key anywhere in the document.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a body with content-type application/json",
            ));
        }
        // A body that trickles in holds a request permit (crate::limit): bounded.
        let limit = state.body_timeout;
        let bytes = tokio::time::timeout(limit, Bytes::from_request(req, state))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the request body did not arrive within {} (body_timeout)",
                        baton_core::duration::format(limit)
                    ),
                )
            })?
            .map_err(|r| {
                let text = r.body_text();
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", text)
                } else {
                    ApiError::new(r.status(), "bad_request", text)
                }
            })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Checks `bytes` for repeated keys, then deserializes them with axum's own rules
/// (so syntax and data errors read as they always did).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Some(duplicate) = find_duplicate_key(bytes) {
        return Err(ApiError::bad_request(duplicate));
    }
    let Json(value) = Json::<T>::from_bytes(bytes)?;
    Ok(value)
}

fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

/// `duplicate key "a" at jobs` for the first object in `bytes` that names a key
/// twice; `None` when there is none, or when `bytes` is not JSON (the deserializer
/// that runs next reports that).
pub fn find_duplicate_key(bytes: &[u8]) -> Option<String> {
    let mut walk = Walk {
        path: Vec::new(),
        found: None,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let _ = Node { walk: &mut walk }.deserialize(&mut de);
    walk.found
}

/// A step from an object or array to one of its values.
enum Segment<'de> {
    Key(Cow<'de, str>),
    Index(usize),
}

struct Walk<'de> {
    path: Vec<Segment<'de>>,
    found: Option<String>,
}

impl Walk<'_> {
    fn where_(&self) -> String {
        if self.path.is_empty() {
            return "the top level".into();
        }
        let mut out = String::new();
        for segment in &self.path {
            match segment {
                Segment::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Segment::Index(i) => {
                    out.push_str(&format!("[{i}]"));
                }
            }
        }
        out
    }
}

/// One JSON value, walked without building it.
struct Node<'w, 'de> {
    walk: &'w mut Walk<'de>,
}

impl<'de> DeserializeSeed<'de> for Node<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Objects up to this many keys are checked by a scan; larger ones by a set, so that
/// an object with many keys costs linear time.
const SCAN_KEYS: usize = 16;

impl<'de> de::Visitor<'de> for Node<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            self.walk.path.push(Segment::Index(i));
            let more = seq.next_element_seed(Node {
                walk: &mut *self.walk,
            })?;
            self.walk.path.pop();
            if more.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut few: Vec<Cow<'de, str>> = Vec::new();
        let mut many: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let seen = if many.is_empty() && few.len() < SCAN_KEYS {
                few.contains(&key)
            } else {
                if many.is_empty() {
                    many.extend(few.drain(..));
                }
                many.contains(&key)
            };
            if seen {
                let found = format!("duplicate key {:?} at {}", key.as_ref(), self.walk.where_());
                self.walk.found = Some(found);
                return Err(de::Error::custom("duplicate key"));
            }
            self.walk.path.push(Segment::Key(key.clone()));
            map.next_value_seed(Node {
                walk: &mut *self.walk,
            })?;
            self.walk.path.pop();
            if many.is_empty() {
                few.push(key);
            } else {
                many.insert(key);
            }
        }
        Ok(())
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> de::Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::find_duplicate_key;

    #[test]
    fn repeated_keys_are_found_with_their_place() {
        let cases = [
            (
                r#"{"a": 1, "a": 2}"#,
                Some(r#"duplicate key "a" at the top level"#),
            ),
            (
                r#"{"jobs": {"a": {"kind": "x"}, "a": {"kind": "y"}}}"#,
                Some(r#"duplicate key "a" at jobs"#),
            ),
            (
                r#"{"items": [{"x": 1}, {"y": 1, "y": 2}]}"#,
                Some(r#"duplicate key "y" at items[1]"#),
            ),
            (
                r#"{"p": {"q": [[{"k\u0065y": 1, "key": 2}]]}}"#,
                Some(r#"duplicate key "key" at p.q[0][0]"#),
            ),
            // The same key in sibling objects is not a repeat.
            (r#"[{"a": 1}, {"a": 2}, {"b": {"a": 3}}]"#, None),
            (r#"{"a": 1, "b": 2, "c": [1, "x", null, true, 2.5]}"#, None),
            // Not JSON: left for the deserializer to report.
            (r#"{"a": "#, None),
        ];
        for (input, want) in cases {
            assert_eq!(
                find_duplicate_key(input.as_bytes()).as_deref(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn large_objects_are_checked_by_set() {
        let mut keys: Vec<String> = (0..5000).map(|i| format!("\"k{i}\": {i}")).collect();
        let clean = format!("{{{}}}", keys.join(","));
        assert_eq!(find_duplicate_key(clean.as_bytes()), None);
        keys.push("\"k4321\": 0".into());
        let repeated = format!("{{\"big\": {{{}}}}}", keys.join(","));
        assert_eq!(
            find_duplicate_key(repeated.as_bytes()).as_deref(),
            Some(r#"duplicate key "k4321" at big"#)
        );
    }
}
