//! JSON as the text it already is, for the alert rows' `features` and
//! `top_features`.
//!
//! An alert carries two JSON documents: the top SHAP contributions (text
//! the scorer wrote) and every feature of the tick. Built as a
//! `serde_json::Value` they cost a map of owned keys per alert, a parse of
//! the scorer's text back into a tree, and a serialisation of both again
//! for PostgreSQL; in a burst where most ticks of a batch alert, that was a
//! visible share of the batch's time. [`JsonText`] keeps the text: it goes
//! to PostgreSQL (`json` or `jsonb`) byte for byte, and to serde (the Kafka
//! alert topic) as the raw JSON it is.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use serde::Serialize;
use tokio_postgres::types::{accepts, to_sql_checked, IsNull, ToSql, Type};

/// A JSON document as text. Made only from what is JSON already: a
/// [`serde_json::Value`] ([`JsonText::from_value`]) or text this crate
/// wrote with serde_json (`JsonText::written`, inside the crate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(String);

impl JsonText {
    /// The text of `value`.
    pub fn from_value(value: &serde_json::Value) -> Self {
        JsonText(value.to_string())
    }

    /// Text serde_json wrote (serialising a value, or numbers and escaped
    /// strings through its writer): the caller vouches it is one JSON
    /// document, so it is not parsed again here. PostgreSQL still checks it
    /// (`json` and `jsonb` input both parse the text), so a broken one fails
    /// its transaction, never stores.
    pub(crate) fn written(text: String) -> Self {
        JsonText(text)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parsed back into a value (tests, readers that want the tree).
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl ToSql for JsonText {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        // jsonb's binary form is a version byte and the text.
        if *ty == Type::JSONB {
            out.put_u8(1);
        }
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    accepts!(JSON, JSONB);
    to_sql_checked!();
}

impl Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &serde_json::value::RawValue =
            serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_the_json_it_holds() {
        let v = serde_json::json!({"b": [1.5, null], "a": "x\"y"});
        let t = JsonText::from_value(&v);
        assert_eq!(t.to_value().unwrap(), v);
        // Inside another document, as a value (the alert topic's message).
        let outer = serde_json::json!({ "features": t });
        assert_eq!(outer["features"], v);
        assert_eq!(serde_json::to_string(&t).unwrap(), v.to_string());
    }

    #[test]
    fn broken_text_fails_to_serialise() {
        let t = JsonText::written("{\"a\": ".into());
        assert!(serde_json::to_string(&t).is_err());
    }

    #[test]
    fn jsonb_gets_its_version_byte() {
        let t = JsonText::written("[1]".into());
        let mut out = BytesMut::new();
        t.to_sql(&Type::JSONB, &mut out).unwrap();
        assert_eq!(&out[..], b"\x01[1]");
        let mut out = BytesMut::new();
        t.to_sql(&Type::JSON, &mut out).unwrap();
        assert_eq!(&out[..], b"[1]");
        assert!(!<JsonText as ToSql>::accepts(&Type::TEXT));
    }
}
