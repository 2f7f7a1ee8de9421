//! A strict JSON scanner over one line, for the spans reader (`lib.rs`).
//!
//! Why our own and not a parser crate: the reader must refuse (and leave to the Python reading)
//! anything the Python reading might read differently, so every rule here is the narrow one: no
//! escaped object keys, no lone surrogates, numbers only as plain literals, bounded nesting.
//! Refusing is always safe (`Err(())` = "read again"); accepting something msgspec or orjson
//! would read otherwise is the one thing this module must never do. The line is known to be
//! valid UTF-8 before any of this runs (`lib.rs` checks it first).

use std::borrow::Cow;

/// "Read again": the Python reading takes the line (and names it if it is bad).
pub type R<T> = Result<T, ()>;

/// Deeper skipped values are refused: the Python reading decides what they are.
const MAX_SKIP_DEPTH: u32 = 64;

pub struct Scan<'a> {
    pub b: &'a [u8],
    pub i: usize,
}

impl<'a> Scan<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Scan { b, i: 0 }
    }

    #[inline]
    pub fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if c == b' ' || c == b'\n' || c == b'\t' || c == b'\r' {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    pub fn peek(&mut self) -> u8 {
        self.ws();
        *self.b.get(self.i).unwrap_or(&0)
    }

    #[inline]
    pub fn eat(&mut self, c: u8) -> R<()> {
        if self.peek() == c {
            self.i += 1;
            Ok(())
        } else {
            Err(())
        }
    }

    pub fn at_end(&mut self) -> bool {
        self.ws();
        self.i == self.b.len()
    }

    /// The raw bytes between the quotes of a string at the cursor, and whether it holds escapes.
    fn raw_string(&mut self) -> R<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i = plain_run(self.b, self.i);
            match *self.b.get(self.i).ok_or(())? {
                b'"' => {
                    let s = &self.b[start..self.i];
                    self.i += 1;
                    return Ok((s, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.i += 2; // checked when unescaped; skipped strings are checked too
                }
                _ => return Err(()), // a raw control character: not JSON
            }
        }
    }

    /// An object key: refused when escaped (compared as raw bytes with the names we read).
    pub fn key(&mut self) -> R<&'a [u8]> {
        let (s, escaped) = self.raw_string()?;
        if escaped {
            return Err(());
        }
        self.eat(b':')?;
        Ok(s)
    }

    /// A string value, unescaped (borrowed when it holds no escapes, the common case).
    pub fn string(&mut self) -> R<Cow<'a, str>> {
        let (s, escaped) = self.raw_string()?;
        if !escaped {
            // the whole line was checked to be UTF-8 and the slice ends at ASCII quotes
            return Ok(Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(s) }));
        }
        unescape(s).map(Cow::Owned)
    }

    /// Before the next key of an object: true if there is one (after `{` or a `,`).
    pub fn next_key(&mut self, first: &mut bool) -> R<bool> {
        self.next_in(b'}', first)
    }

    /// Before the next element of an array (after `[` or a `,`).
    pub fn next_item(&mut self, first: &mut bool) -> R<bool> {
        self.next_in(b']', first)
    }

    /// Before the next member of an object or array that `close` ends: false at its end.
    fn next_in(&mut self, close: u8, first: &mut bool) -> R<bool> {
        match self.peek() {
            c if c == close => {
                self.i += 1;
                Ok(false)
            }
            b',' if !*first => {
                self.i += 1;
                Ok(true)
            }
            _ if *first => {
                *first = false;
                Ok(true)
            }
            _ => Err(()),
        }
    }

    /// `null` at the cursor (consumed) or not.
    pub fn null(&mut self) -> bool {
        if self.peek() == b'n' && self.b[self.i..].starts_with(b"null") {
            self.i += 4;
            return true;
        }
        false
    }

    pub fn boolean(&mut self) -> R<bool> {
        self.ws();
        let rest = &self.b[self.i..];
        if rest.starts_with(b"true") {
            self.i += 4;
            Ok(true)
        } else if rest.starts_with(b"false") {
            self.i += 5;
            Ok(false)
        } else {
            Err(())
        }
    }

    /// A number literal as JSON writes it. Integers longer than 18 characters and other
    /// literals longer than 32 are refused: the decoders disagree at the edges (huge integers,
    /// past a double's range), which the data never reaches where the report reads.
    pub fn number(&mut self) -> R<Number<'a>> {
        self.ws();
        let start = self.i;
        let b = self.b;
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let digits = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == digits || (b[digits] == b'0' && i - digits > 1) {
            return Err(()); // no digits, or a leading zero
        }
        let mut integer = true;
        if b.get(i) == Some(&b'.') {
            integer = false;
            i = digits_after(b, i + 1)?;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            integer = false;
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            i = digits_after(b, i)?;
        }
        if i - start > if integer { 18 } else { 32 } {
            return Err(());
        }
        self.i = i;
        Ok(Number { text: &b[start..i], integer })
    }

    /// Any JSON value, checked and passed over; returns its raw bytes.
    pub fn skip(&mut self, depth: u32) -> R<&'a [u8]> {
        if depth > MAX_SKIP_DEPTH {
            return Err(());
        }
        let start = {
            self.ws();
            self.i
        };
        match self.peek() {
            b'{' => {
                self.i += 1;
                let mut first = true;
                while self.next_key(&mut first)? {
                    self.raw_string().and_then(|(s, esc)| check_escapes(s, esc))?;
                    self.eat(b':')?;
                    self.skip(depth + 1)?;
                }
            }
            b'[' => {
                self.i += 1;
                let mut first = true;
                while self.next_item(&mut first)? {
                    self.skip(depth + 1)?;
                }
            }
            b'"' => {
                let (s, esc) = self.raw_string()?;
                check_escapes(s, esc)?;
            }
            b't' | b'f' => {
                self.boolean()?;
            }
            b'n' => {
                if !self.null() {
                    return Err(());
                }
            }
            _ => {
                let n = self.number()?;
                if !n.integer {
                    n.as_f64()?; // out of a double's range: orjson refuses the line
                }
            }
        }
        Ok(&self.b[start..self.i])
    }
}

/// The end of one or more digits starting at `i`.
fn digits_after(b: &[u8], mut i: usize) -> R<usize> {
    let from = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    if i == from { Err(()) } else { Ok(i) }
}

pub struct Number<'a> {
    pub text: &'a [u8],
    pub integer: bool,
}

impl Number<'_> {
    pub fn as_f64(&self) -> R<f64> {
        // correctly rounded, as Python's float() and msgspec's decoder are
        let s = unsafe { std::str::from_utf8_unchecked(self.text) };
        let d = s.parse::<f64>().map_err(|_| ())?;
        // past a double's range (orjson refuses it) or below it (rounded to zero): read again
        let nonzero = self.text.iter().take_while(|&&c| c != b'e' && c != b'E').any(|&c| (b'1'..=b'9').contains(&c));
        if !d.is_finite() || (d == 0.0 && nonzero) {
            return Err(());
        }
        Ok(d)
    }

    pub fn as_i64(&self) -> R<i64> {
        if !self.integer {
            return Err(());
        }
        let s = unsafe { std::str::from_utf8_unchecked(self.text) };
        s.parse::<i64>().map_err(|_| ())
    }
}

/// The index of the first byte at or after `i` that ends a run of plain string bytes (a quote,
/// a backslash or a control character), or `b.len()`. Eight bytes at a time (why: most of a line
/// is string bytes, ids and texts the reader passes over; a byte at a time was half its work).
#[inline]
fn plain_run(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let quote = w ^ (ONES * b'"' as u64);
        let slash = w ^ (ONES * b'\\' as u64);
        // a zero byte in `quote`/`slash`, or a byte below 0x20 in `w`; the lowest flag is exact
        let found = ((quote.wrapping_sub(ONES) & !quote) | (slash.wrapping_sub(ONES) & !slash)
            | (w.wrapping_sub(ONES * 0x20) & !w))
            & HIGH;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && b[i] != b'"' && b[i] != b'\\' && b[i] >= 0x20 {
        i += 1;
    }
    i
}

fn check_escapes(s: &[u8], escaped: bool) -> R<()> {
    if escaped {
        unescape(s)?;
    }
    Ok(())
}

fn hex4(s: &[u8], at: usize) -> R<u32> {
    let h = s.get(at..at + 4).ok_or(())?;
    let mut n = 0u32;
    for &c in h {
        n = n * 16 + (c as char).to_digit(16).ok_or(())?;
    }
    Ok(n)
}

/// The text of a string with escapes. A lone surrogate (`\ud800`) is refused: the decoders
/// differ on it, so the Python reading decides.
pub fn unescape(s: &[u8]) -> R<String> {
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *s.get(i + 1).ok_or(())?;
        i += 2;
        let simple = match e {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => 0,
            _ => return Err(()),
        };
        if e != b'u' {
            out.push(simple);
            continue;
        }
        let mut cp = hex4(s, i)?;
        i += 4;
        if (0xDC00..0xE000).contains(&cp) {
            return Err(());
        }
        if (0xD800..0xDC00).contains(&cp) {
            if s.get(i..i + 2) != Some(b"\\u") {
                return Err(());
            }
            let low = hex4(s, i + 2)?;
            if !(0xDC00..0xE000).contains(&low) {
                return Err(());
            }
            i += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        let ch = char::from_u32(cp).ok_or(())?;
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    String::from_utf8(out).map_err(|_| ())
}
