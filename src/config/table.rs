//! A TOML table kept as written, each value with its place in the file, and decoded later into
//! derived types, one part at a time.
//!
//! Used where one table's keys belong to more than one type: `[limits]` (the per-session keys
//! shared with `[route.limits]`, and the global-only keys) and `[route.auth]` (the keys of its
//! `type`). serde still does the parsing; a part takes the keys its type declares, and what is
//! left over is an unknown key. Errors keep the key and the span of its value.

use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A table as written.
#[derive(Debug, Default)]
pub struct Table {
    /// The entries no part has taken yet, in file order.
    entries: Vec<Entry>,
    /// Every key with the span of its value, for messages from validation.
    spans: Vec<(String, Range<usize>)>,
}

#[derive(Debug)]
struct Entry {
    key: String,
    value: toml::Value,
    span: Range<usize>,
}

/// A value that did not decode: which key (when known), where, and why.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub key: Option<String>,
    pub span: Option<Range<usize>>,
    pub message: String,
}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DecodeError {
            key: None,
            span: None,
            message: msg.to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for Table {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Table;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Table, A::Error> {
                let mut table = Table::default();
                while let Some(key) = map.next_key::<String>()? {
                    let value: Spanned<toml::Value> = map.next_value()?;
                    let span = value.span();
                    table.spans.push((key.clone(), span.clone()));
                    table.entries.push(Entry {
                        key,
                        value: value.into_inner(),
                        span,
                    });
                }
                Ok(table)
            }
        }
        d.deserialize_map(Entries)
    }
}

impl Table {
    /// The span of `key`'s value, if the table has that key.
    pub fn span(&self, key: &str) -> Option<Range<usize>> {
        self.spans
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, s)| s.clone())
    }

    /// Decode the keys `T` declares into a `T`; returns it with those keys' names.
    pub fn take<T: DeserializeOwned>(
        &mut self,
    ) -> Result<(T, &'static [&'static str]), DecodeError> {
        let mut fields: &'static [&'static str] = &[];
        let value = T::deserialize(Part {
            table: self,
            fields: &mut fields,
        })?;
        Ok((value, fields))
    }

    /// Decode the value of `key` alone, if present.
    pub fn take_value<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, DecodeError> {
        let Some(at) = self.entries.iter().position(|e| e.key == key) else {
            return Ok(None);
        };
        let e = self.entries.remove(at);
        T::deserialize(e.value)
            .map(Some)
            .map_err(|err| DecodeError {
                key: Some(e.key),
                span: Some(e.span),
                message: super::toml_message(&err),
            })
    }

    /// The first key no part has taken, with the span of its value.
    pub fn leftover(&self) -> Option<(&str, Range<usize>)> {
        self.entries
            .first()
            .map(|e| (e.key.as_str(), e.span.clone()))
    }
}

/// The names of the keys `T` declares.
pub fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Part {
        table: &mut Table::default(),
        fields: &mut fields,
    });
    fields
}

/// The message serde gives for an unknown key, with the keys that are known.
pub fn unknown_key(key: &str, expected: &[&str]) -> String {
    let quoted: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
    match quoted.as_slice() {
        [] => format!("unknown field `{key}`, there are no fields"),
        [one] => format!("unknown field `{key}`, expected {one}"),
        [a, b] => format!("unknown field `{key}`, expected {a} or {b}"),
        all => format!("unknown field `{key}`, expected one of {}", all.join(", ")),
    }
}

/// The deserializer of one part: the entries whose keys the target struct declares.
struct Part<'a> {
    table: &'a mut Table,
    fields: &'a mut &'static [&'static str],
}

impl<'de> Deserializer<'de> for Part<'_> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_struct("", &[], visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        *self.fields = fields;
        let (mine, rest) = std::mem::take(&mut self.table.entries)
            .into_iter()
            .partition(|e| fields.contains(&e.key.as_str()));
        self.table.entries = rest;
        visitor.visit_map(PartEntries {
            entries: Vec::into_iter(mine),
            current: None,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

struct PartEntries {
    entries: std::vec::IntoIter<Entry>,
    current: Option<Entry>,
}

impl<'de> MapAccess<'de> for PartEntries {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        let key = entry.key.clone();
        let span = entry.span.clone();
        self.current = Some(entry);
        seed.deserialize(key.clone().into_deserializer())
            .map(Some)
            .map_err(|mut e: DecodeError| {
                e.key.get_or_insert(key);
                e.span.get_or_insert(span);
                e
            })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        let entry = self
            .current
            .take()
            .ok_or_else(|| de::Error::custom("a value without its key"))?;
        seed.deserialize(entry.value).map_err(|e| DecodeError {
            key: Some(entry.key),
            span: Some(entry.span),
            message: super::toml_message(&e),
        })
    }
}
