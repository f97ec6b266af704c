//! A JSON writer for the bulk of big answers (`sessions.usage` for the dashboard: a thousand
//! sessions, tens of thousands of small objects). Keys are written as the constant bytes they
//! are, numbers without the formatting machinery, and strings raw unless they hold something
//! to escape (then serde_json escapes them): several times faster than serde's per-field path,
//! which scans every key for escapes. Anything not hot goes through serde_json into the same
//! buffer ([`Json::serde`]).

use serde::Serialize;

pub struct Json {
    pub buf: Vec<u8>,
}

impl Json {
    pub fn with_capacity(n: usize) -> Json {
        Json {
            buf: Vec::with_capacity(n),
        }
    }

    /// Bytes that are already JSON (keys with their quotes and colon, punctuation).
    #[inline]
    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// A string, quoted and escaped.
    pub fn str(&mut self, s: &str) {
        if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            self.buf.push(b'"');
            self.buf.extend_from_slice(s.as_bytes());
            self.buf.push(b'"');
        } else {
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut self.buf, s);
        }
    }

    pub fn u64(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.buf.extend_from_slice(&digits[i..]);
    }

    pub fn i64(&mut self, v: i64) {
        if v < 0 {
            self.buf.push(b'-');
        }
        self.u64(v.unsigned_abs());
    }

    /// A number as the shortest decimal that reads back the same (never an exponent), `null`
    /// for what JSON cannot hold (as serde_json writes them).
    pub fn f64(&mut self, v: f64) {
        use std::io::Write;
        if v.is_finite() {
            let _ = write!(self.buf, "{v}");
        } else {
            self.buf.extend_from_slice(b"null");
        }
    }

    /// An amount of money to a tenth of a nano-dollar, as a plain decimal (`0.1396961750`
    /// is written `0.139696175`): integer arithmetic, no float formatting. Amounts beyond
    /// ±1e8 (nothing keel counts) go through [`Json::f64`].
    pub fn money(&mut self, v: f64) {
        const SCALE: f64 = 1e10;
        if !(v.is_finite() && v.abs() < 1e8) {
            return self.f64(v);
        }
        let n = (v.abs() * SCALE).round() as u64;
        if v < 0.0 && n > 0 {
            self.buf.push(b'-');
        }
        self.u64(n / SCALE as u64);
        let mut frac = n % SCALE as u64;
        if frac > 0 {
            let mut digits = [b'0'; 10];
            for d in digits.iter_mut().rev() {
                *d = b'0' + (frac % 10) as u8;
                frac /= 10;
            }
            let end = digits.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
            self.buf.push(b'.');
            self.buf.extend_from_slice(&digits[..end]);
        }
    }

    /// Anything else, through serde_json.
    pub fn serde<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), serde_json::Error> {
        serde_json::to_writer(&mut self.buf, v)
    }

    /// A comma unless `first` (and clears it): between the items of an array.
    #[inline]
    pub fn sep(&mut self, first: &mut bool) {
        if !std::mem::take(first) {
            self.buf.push(b',');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn what_it_writes_reads_back_as_serde_json_would_write_it() {
        let mut j = Json::with_capacity(0);
        j.raw(b"[");
        let mut first = true;
        for s in [
            "plain",
            "a \"quote\"",
            "back\\slash",
            "tab\there",
            "日本語",
            "",
        ] {
            j.sep(&mut first);
            j.str(s);
        }
        for v in [0u64, 7, 10, 1234567890, u64::MAX] {
            j.sep(&mut first);
            j.u64(v);
        }
        for v in [0i64, -1, i64::MIN, i64::MAX] {
            j.sep(&mut first);
            j.i64(v);
        }
        for v in [0.0, 0.1, 2.1787264500000004, 1e-7, 1e21, -3.5, f64::NAN] {
            j.sep(&mut first);
            j.f64(v);
        }
        j.raw(b"]");
        let back: Value = serde_json::from_slice(&j.buf).unwrap();
        let want = json!([
            "plain",
            "a \"quote\"",
            "back\\slash",
            "tab\there",
            "日本語",
            "",
            0,
            7,
            10,
            1234567890u64,
            u64::MAX,
            0,
            -1,
            i64::MIN,
            i64::MAX,
            0.0,
            0.1,
            2.1787264500000004,
            1e-7,
            1e21,
            -3.5,
            null
        ]);
        for (a, b) in back
            .as_array()
            .unwrap()
            .iter()
            .zip(want.as_array().unwrap())
        {
            match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) if a.is_f64() || b.is_f64() => assert_eq!(x, y),
                _ => assert_eq!(a, b),
            }
        }
        assert_eq!(back.as_array().unwrap().len(), 22);
    }

    #[test]
    fn money_is_written_to_a_tenth_of_a_nano_dollar() {
        let cases = [
            (0.0, "0"),
            (2.1787264500000004, "2.17872645"),
            (0.139696175, "0.139696175"),
            (1e-7, "0.0000001"),
            (0.00000000004, "0"),
            (0.00000000006, "0.0000000001"),
            (-3.25, "-3.25"),
            (12345.5, "12345.5"),
            (5e8, "500000000"),
        ];
        for (v, want) in cases {
            let mut j = Json::with_capacity(0);
            j.money(v);
            assert_eq!(String::from_utf8(j.buf).unwrap(), want, "{v}");
        }
    }
}
