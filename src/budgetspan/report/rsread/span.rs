//! One line's spans, read the way `fastread._spans` reads msgspec's structs, into `SpanRec`s.
//!
//! The line is scanned once. Each span's fields and attributes are first gathered as borrowed
//! slices (attributes in order: the Python reading fills the dict in that order, a key seen twice
//! keeps its first place and its last value); the `SpanRec` is made only once the span's object
//! has been read to its end, so a refusal half-way builds nothing for it.

use crate::config::Config;
use crate::ffi::*;
use crate::json::{Scan, R};
use crate::records::{make, Ids};
use std::borrow::Cow;

/// An AnyValue's fields msgspec reads (`otlp_schema.Value`); the others are scanned and dropped.
#[derive(Default)]
pub struct Value<'a> {
    string: Option<Cow<'a, str>>,
    boolean: Option<bool>,
    int_text: Option<Cow<'a, str>>,
    int_number: bool,
    double: Option<f64>,
    double_text: bool,
}

/// A kept value as Python gets it (`fastread._spans` and `_not_text`, in their order).
pub enum Kept<'v, 'a> {
    Text(&'v Cow<'a, str>),
    Int(u64),
    Bool(bool),
    Float(f64),
}

fn small_count(t: &str) -> Option<u64> {
    // `0 < len(n) <= 18 and n.isdigit() and n.isascii()`: below 10**18, fits a u64
    if t.is_empty() || t.len() > 18 || !t.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

impl<'a> Value<'a> {
    pub fn kept(&self) -> R<Kept<'_, 'a>> {
        if let Some(t) = &self.string {
            return Ok(Kept::Text(t));
        }
        if let Some(t) = &self.int_text {
            if self.boolean.is_none() {
                if let Some(n) = small_count(t) {
                    return Ok(Kept::Int(n));
                }
            }
        }
        if let Some(b) = self.boolean {
            return Ok(Kept::Bool(b));
        }
        if self.int_text.is_some() || self.int_number {
            return Err(()); // the checked `_int`: sign, range... read again
        }
        match self.double {
            Some(d) if !self.double_text => Ok(Kept::Float(d)),
            _ => Err(()),
        }
    }
}

pub struct Attr<'a> {
    pub key: &'a [u8],
    pub value: Option<Value<'a>>, // None: the KV had no value (msgspec's default)
}

#[derive(Default)]
pub struct Span<'a> {
    pub trace_id: Option<Cow<'a, str>>,
    pub span_id: Option<Cow<'a, str>>,
    pub parent_id: Option<Cow<'a, str>>,
    pub name: Option<Cow<'a, str>>,
    pub start: Option<Cow<'a, str>>,
    pub end: Option<Cow<'a, str>>,
    pub attrs: Vec<Attr<'a>>,
    pub error: bool,
    pub events: Option<&'a [u8]>,
}

/// Marks a field as read; a second time is refused (decoders differ on repeated keys).
fn once(seen: &mut u32, bit: u32) -> R<()> {
    if *seen & bit != 0 {
        return Err(());
    }
    *seen |= bit;
    Ok(())
}

fn value<'a>(s: &mut Scan<'a>) -> R<Value<'a>> {
    let mut v = Value::default();
    let (mut seen, mut first) = (0u32, true);
    s.eat(b'{')?;
    while s.next_key(&mut first)? {
        match s.key()? {
            b"stringValue" => {
                once(&mut seen, 1)?;
                v.string = Some(s.string()?);
            }
            b"boolValue" => {
                once(&mut seen, 2)?;
                v.boolean = Some(s.boolean()?);
            }
            b"intValue" => {
                once(&mut seen, 4)?;
                if s.peek() == b'"' {
                    v.int_text = Some(s.string()?);
                } else {
                    s.number()?.as_i64()?; // `int | str`: a float literal is a type error
                    v.int_number = true;
                }
            }
            b"doubleValue" => {
                once(&mut seen, 8)?;
                if s.peek() == b'"' {
                    s.string()?;
                    v.double_text = true;
                } else {
                    let n = s.number()?;
                    // an integer literal is read as an int, then made a float (msgspec's
                    // `float | str`): `-0` is 0.0, not the -0.0 a float parse gives
                    v.double = Some(if n.integer { n.as_i64()? as f64 } else { n.as_f64()? });
                }
            }
            _ => {
                s.skip(0)?;
            }
        }
    }
    Ok(v)
}

/// Room for a span's attributes from the start (most spans have 8 to 16; run spans ~50), so the
/// list is not grown 4, 8, 16 on every span.
const ATTRS_PER_SPAN: usize = 16;

/// `out` with room for a span's attributes (`ATTRS_PER_SPAN`). Measured gain (callgrind,
/// `bench/bench_report.py`'s STAGES 1 minus 0 on the 100k-span file): reading 3,091.4M -> 3,065.0M
/// instructions.
fn room_for_attrs(out: &mut Vec<Attr<'_>>) {
    out.reserve(ATTRS_PER_SPAN);
}

fn attributes<'a>(s: &mut Scan<'a>, out: &mut Vec<Attr<'a>>) -> R<()> {
    if s.null() {
        return Ok(());
    }
    let mut first = true;
    s.eat(b'[')?;
    room_for_attrs(out);
    while s.next_item(&mut first)? {
        let (mut key, mut val, mut seen, mut kfirst) = (None, None, 0u32, true);
        s.eat(b'{')?;
        while s.next_key(&mut kfirst)? {
            match s.key()? {
                b"key" => {
                    once(&mut seen, 1)?;
                    let k = s.string()?;
                    match k {
                        Cow::Borrowed(b) => key = Some(b.as_bytes()),
                        Cow::Owned(_) => return Err(()), // an escaped key: read again
                    }
                }
                b"value" => {
                    once(&mut seen, 2)?;
                    val = Some(value(s)?);
                }
                _ => {
                    s.skip(0)?;
                }
            }
        }
        out.push(Attr { key: key.ok_or(())?, value: val });
    }
    Ok(())
}

fn status(s: &mut Scan<'_>) -> R<bool> {
    if s.null() {
        return Ok(false);
    }
    let (mut error, mut seen, mut first) = (false, 0u32, true);
    s.eat(b'{')?;
    while s.next_key(&mut first)? {
        if s.key()? == b"code" {
            once(&mut seen, 1)?;
            error = if s.null() {
                false
            } else if s.peek() == b'"' {
                s.string()? == "STATUS_CODE_ERROR"
            } else {
                s.number()?.as_i64()? == 2
            };
        } else {
            s.skip(0)?;
        }
    }
    Ok(error)
}

fn opt_text<'a>(s: &mut Scan<'a>) -> R<Option<Cow<'a, str>>> {
    if s.null() {
        return Ok(None);
    }
    s.string().map(Some)
}

fn span<'a>(s: &mut Scan<'a>) -> R<Span<'a>> {
    let mut sp = Span::default();
    let (mut seen, mut first) = (0u32, true);
    s.eat(b'{')?;
    while s.next_key(&mut first)? {
        match s.key()? {
            b"traceId" => { once(&mut seen, 1)?; sp.trace_id = Some(s.string()?) }
            b"spanId" => { once(&mut seen, 2)?; sp.span_id = Some(s.string()?) }
            b"name" => { once(&mut seen, 4)?; sp.name = Some(s.string()?) }
            b"startTimeUnixNano" => { once(&mut seen, 8)?; sp.start = Some(s.string()?) }
            b"endTimeUnixNano" => { once(&mut seen, 16)?; sp.end = Some(s.string()?) }
            b"parentSpanId" => { once(&mut seen, 32)?; sp.parent_id = opt_text(s)? }
            b"attributes" => { once(&mut seen, 64)?; attributes(s, &mut sp.attrs)? }
            b"status" => { once(&mut seen, 128)?; sp.error = status(s)? }
            b"events" => { once(&mut seen, 256)?; sp.events = Some(s.skip(0)?) }
            _ => { s.skip(0)?; }
        }
    }
    Ok(sp)
}

/// `for x in <list>` over a required list field of one of the wrapper objects.
fn list_of<'a>(s: &mut Scan<'a>, mut each: impl FnMut(&mut Scan<'a>) -> R<()>) -> R<()> {
    let mut first = true;
    s.eat(b'[')?;
    while s.next_item(&mut first)? {
        each(s)?;
    }
    Ok(())
}

/// An object of which one list field is read (`resourceSpans`, `scopeSpans`, `spans`).
fn wrapper<'a>(s: &mut Scan<'a>, field: &[u8], mut each: impl FnMut(&mut Scan<'a>) -> R<()>) -> R<()> {
    let (mut found, mut first) = (false, true);
    s.eat(b'{')?;
    while s.next_key(&mut first)? {
        if s.key()? == field {
            if found {
                return Err(());
            }
            found = true;
            list_of(s, &mut each)?;
        } else {
            s.skip(0)?;
        }
    }
    if found { Ok(()) } else { Err(()) }
}

/// The spans of one line as a list of `SpanRec`s, or Err: read again.
pub unsafe fn read(line: &[u8], c: &Config) -> R<Owned> {
    if std::str::from_utf8(line).is_err() {
        return Err(()); // orjson refuses it, then reads it with replacement characters
    }
    let out = Owned::new(PyList_New(0))?;
    let mut s = Scan::new(line);
    let mut ids = Ids::for_line();
    wrapper(&mut s, b"resourceSpans", |s| {
        wrapper(s, b"scopeSpans", |s| {
            wrapper(s, b"spans", |s| {
                let sp = span(s)?;
                let rec = make(&sp, c, &mut ids)?;
                if PyList_Append(out.0, rec.0) != 0 {
                    PyErr_Clear();
                    return Err(());
                }
                Ok(())
            })
        })
    })?;
    if !s.at_end() {
        return Err(());
    }
    Ok(out)
}
