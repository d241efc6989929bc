//! JSON written straight into a byte buffer, for the trace: one line per call, many
//! thousands a second, so no `serde_json::Value` tree (a map node, a `String` key and
//! a boxed value per field, all freed again) stands between a record and its bytes.
//!
//! The bytes are those `serde_json` writes for the same `Value`: its maps are sorted,
//! so an [`Object`]'s keys must come in byte order (checked in debug builds), and every
//! scalar and string goes through `serde_json`'s own serializer (number formats,
//! escaping). Bytes that are not UTF-8 are written as `{"hex": "…"}`.

use std::io::Write;

use serde::Serialize;

/// An object being written; [`Object::end`] closes it.
pub struct Object<'a> {
    out: &'a mut Vec<u8>,
    /// The last key written ("" before the first).
    last: &'static str,
}

impl<'a> Object<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Object { out, last: "" }
    }

    /// Start the member `key`: its value is written next.
    fn key(&mut self, key: &'static str) -> &mut Vec<u8> {
        debug_assert!(self.last < key, "JSON keys out of order: {:?} after {:?}", key, self.last);
        debug_assert!(key.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'), "key {key:?}");
        if !self.last.is_empty() {
            self.out.push(b',');
        }
        self.last = key;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    /// A string.
    pub fn str(&mut self, key: &'static str, s: &str) {
        string(self.key(key), s);
    }

    /// A number, a bool, or a list of them or of strings, as `serde_json` writes it.
    pub fn value<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) {
        value_into(self.key(key), value);
    }

    /// Bytes: a string when they are UTF-8, else `{"hex": "…"}`.
    pub fn bytes(&mut self, key: &'static str, b: &[u8]) {
        bytes(self.key(key), b);
    }

    /// A list of byte strings.
    pub fn bytes_list<B: AsRef<[u8]>>(&mut self, key: &'static str, list: &[B]) {
        let out = self.key(key);
        out.push(b'[');
        for (i, b) in list.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            bytes(out, b.as_ref());
        }
        out.push(b']');
    }

    /// A nested object, closed with its own [`Object::end`].
    pub fn object(&mut self, key: &'static str) -> Object<'_> {
        Object::new(self.key(key))
    }

    /// A value written by `write` (which must write exactly one JSON value).
    pub fn with(&mut self, key: &'static str, write: impl FnOnce(&mut Vec<u8>)) {
        write(self.key(key));
    }

    pub fn end(self) {
        self.out.push(b'}');
    }
}

/// `value` as `serde_json` writes it.
pub fn value_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing into a Vec cannot fail; nor can serialising numbers, strings, bools and
    // lists of them (no map with non-string keys).
    let _ = serde_json::to_writer(out, value);
}

/// A string, escaped as `serde_json` escapes it.
pub fn string(out: &mut Vec<u8>, s: &str) {
    value_into(out, s);
}

/// Bytes: a string when they are UTF-8, else `{"hex": "…"}`, so nothing is lost.
pub fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => string(out, s),
        Err(_) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.reserve(b.len() * 2 + 12);
            out.extend_from_slice(b"{\"hex\":\"");
            for &x in b {
                out.extend_from_slice(&[HEX[usize::from(x >> 4)], HEX[usize::from(x & 15)]]);
            }
            out.extend_from_slice(b"\"}");
        }
    }
}

/// `"0x1f"`: a number in hex, as a string (addresses, registers).
pub fn hex_string(out: &mut Vec<u8>, n: u64) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "\"{n:#x}\"");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_what_serde_json_writes_for_the_same_value() {
        let mut out = Vec::new();
        let mut o = Object::new(&mut out);
        o.bytes("a", b"/etc/\xff");
        o.bytes("b", "tab\t\"q\" \u{1} é \u{7f}".as_bytes());
        o.bytes_list("c", &[b"x".to_vec(), b"\x00\xfe".to_vec()]);
        o.value("d", &-7i64);
        o.value("e", &0.1f64);
        o.value("f", &f64::NAN);
        o.with("g", |out| hex_string(out, 0xdead));
        let mut inner = o.object("h");
        inner.value("x", &true);
        inner.end();
        o.object("i").end();
        o.value("j", &["s1", "s2"]);
        o.str("k", "plain /path");
        o.str("l", "\\ \" \u{8} \u{c} \n \r \t \u{1f} \u{7f} é");
        o.end();
        let want = json!({
            "a": {"hex": "2f6574632fff"},
            "b": "tab\t\"q\" \u{1} é \u{7f}",
            "c": ["x", {"hex": "00fe"}],
            "d": -7,
            "e": 0.1,
            "f": null,
            "g": "0xdead",
            "h": {"x": true},
            "i": {},
            "j": ["s1", "s2"],
            "k": "plain /path",
            "l": "\\ \" \u{8} \u{c} \n \r \t \u{1f} \u{7f} é",
        });
        assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&want).unwrap());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "out of order")]
    fn keys_out_of_order_are_caught() {
        let mut out = Vec::new();
        let mut o = Object::new(&mut out);
        o.value("time", &1);
        o.value("pid", &1);
    }
}
