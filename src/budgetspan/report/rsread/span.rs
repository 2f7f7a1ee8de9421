//! One line's spans, read the way `fastread._spans` reads msgspec's structs, into `SpanRec`s.
//!
//! The line is scanned once. Each span's fields and attributes are first gathered as borrowed
//! slices (attributes in order: the Python reading fills the dict in that order, a key seen twice
//! keeps its first place and its last value); the `SpanRec` is made only once the span's object
//! has been read to its end, so a refusal half-way builds nothing for it.

use crate::ffi::*;
use crate::json::{Scan, R};
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::raw::{c_char, c_void};

/// What the Python side hands over once per `Keep` (`fastread._native_state`), kept alive for
/// good (a handful per process): the kept keys (their own str objects, so each span's dict is
/// keyed by the very strings the report looks up), and what makes a `SpanRec`.
pub struct Config {
    keys: HashMap<Vec<u8>, *mut PyObject, BuildHasherDefault<Fnv>>,
    prefixes: Vec<Vec<u8>>,
    on_key: Vec<u8>,
    on_value: Vec<u8>,
    span_rec: *mut PyObject,
    tp_new: NewFunc,
    no_args: *mut PyObject,
    events_fn: *mut PyObject,
    names: [*mut PyObject; 11],
    op_key: *mut PyObject,
    dup_key: *mut PyObject,
    phase_key: *mut PyObject,
}

/// FNV-1a: the keys are short and ours; the std hasher (SipHash) was 7% of the reader's work.
#[derive(Default)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &c in bytes {
            h = (h ^ c as u64).wrapping_mul(0x100_0000_01b3);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

static mut CONFIGS: Vec<(usize, &'static Config)> = Vec::new();

unsafe fn utf8(o: *mut PyObject) -> Option<Vec<u8>> {
    let mut n: Py_ssize_t = 0;
    let p = PyUnicode_AsUTF8AndSize(o, &mut n);
    if p.is_null() {
        PyErr_Clear();
        return None;
    }
    Some(std::slice::from_raw_parts(p as *const u8, n as usize).to_vec())
}

unsafe fn strs(t: *mut PyObject) -> Option<Vec<(Vec<u8>, *mut PyObject)>> {
    let n = PyTuple_Size(t);
    if n < 0 {
        PyErr_Clear();
        return None;
    }
    (0..n).map(|i| {
        let o = PyTuple_GetItem(t, i);
        utf8(o).map(|b| (b, o))
    }).collect()
}

unsafe fn build_config(state: *mut PyObject) -> Option<Config> {
    if PyTuple_Size(state) != 11 {
        PyErr_Clear();
        return None;
    }
    let item = |i| PyTuple_GetItem(state, i);
    let names_t = item(7);
    if PyTuple_Size(names_t) != 11 {
        PyErr_Clear();
        return None;
    }
    let mut names = [std::ptr::null_mut(); 11];
    for (i, slot) in names.iter_mut().enumerate() {
        *slot = PyTuple_GetItem(names_t, i as Py_ssize_t);
    }
    Some(Config {
        keys: strs(item(0))?.into_iter().collect(),
        prefixes: strs(item(1))?.into_iter().map(|(b, _)| b).collect(),
        on_key: utf8(item(2))?,
        on_value: utf8(item(3))?,
        span_rec: PyTuple_GetItem(item(5), 0),
        tp_new: std::mem::transmute::<*mut c_void, Option<NewFunc>>(PyType_GetSlot(
            PyTuple_GetItem(item(5), 0),
            PY_TP_NEW,
        ))?,
        no_args: Owned::new(PyTuple_New(0)).ok()?.into_raw(), // kept for good, as the config
        events_fn: item(6),
        names,
        op_key: item(8),
        dup_key: item(9),
        phase_key: item(10),
    })
}

/// The reading for `state` (looked up by identity: the Python side makes one per `Keep`).
pub unsafe fn config_for(state: *mut PyObject) -> Option<&'static Config> {
    let configs = &mut *std::ptr::addr_of_mut!(CONFIGS);
    if let Some((_, c)) = configs.iter().find(|(k, _)| *k == state as usize) {
        return Some(*c);
    }
    let config: &'static Config = Box::leak(Box::new(build_config(state)?));
    Py_IncRef(state); // its objects are borrowed by the config, forever
    configs.push((state as usize, config));
    Some(config)
}

/// An AnyValue's fields msgspec reads (`otlp_schema.Value`); the others are scanned and dropped.
#[derive(Default)]
struct Value<'a> {
    string: Option<Cow<'a, str>>,
    boolean: Option<bool>,
    int_text: Option<Cow<'a, str>>,
    int_number: bool,
    double: Option<f64>,
    double_text: bool,
}

/// A kept value as Python gets it (`fastread._spans` and `_not_text`, in their order).
enum Kept<'v, 'a> {
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
    fn kept(&self) -> R<Kept<'_, 'a>> {
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

struct Attr<'a> {
    key: &'a [u8],
    value: Option<Value<'a>>, // None: the KV had no value (msgspec's default)
}

#[derive(Default)]
struct Span<'a> {
    trace_id: Option<Cow<'a, str>>,
    span_id: Option<Cow<'a, str>>,
    parent_id: Option<Cow<'a, str>>,
    name: Option<Cow<'a, str>>,
    start: Option<Cow<'a, str>>,
    end: Option<Cow<'a, str>>,
    attrs: Vec<Attr<'a>>,
    error: bool,
    events: Option<&'a [u8]>,
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
                    let d = s.number()?.as_f64()?;
                    v.double = Some(d);
                }
            }
            _ => {
                s.skip(0)?;
            }
        }
    }
    Ok(v)
}

fn attributes<'a>(s: &mut Scan<'a>, out: &mut Vec<Attr<'a>>) -> R<()> {
    if s.null() {
        return Ok(());
    }
    let mut first = true;
    s.eat(b'[')?;
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
    let mut ids = Ids::default();
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

unsafe fn text(t: &str) -> R<Owned> {
    Owned::new(PyUnicode_FromStringAndSize(t.as_ptr() as *const c_char, t.len() as Py_ssize_t))
}

/// A timestamp: 1 to 20 ASCII digits, below 2**64 (`fastread._spans`' checks).
fn nanos(t: &str) -> R<u64> {
    if t.is_empty() || t.len() > 20 || !t.bytes().all(|c| c.is_ascii_digit()) {
        return Err(());
    }
    t.parse::<u64>().map_err(|_| ())
}

unsafe fn set(o: &Owned, name: *mut PyObject, v: *mut PyObject) -> R<()> {
    if PyObject_SetAttr(o.0, name, v) != 0 {
        PyErr_Clear();
        return Err(());
    }
    Ok(())
}

/// Kept texts are mostly a few values over and over (workflows, phases, models, operations, a
/// run's id on each of its spans): one str object each, so the report's later dict lookups and
/// comparisons on them find the hash cached and the same object. Bounded: cleared when full.
static mut TEXTS: Option<HashMap<Vec<u8>, Owned, BuildHasherDefault<Fnv>>> = None;
const MAX_TEXTS: usize = 4096;
const MAX_TEXT_LEN: usize = 64;

unsafe fn shared_text(t: &str) -> R<Owned> {
    if t.len() > MAX_TEXT_LEN {
        return text(t);
    }
    let texts = (*std::ptr::addr_of_mut!(TEXTS)).get_or_insert_with(HashMap::default);
    if let Some(o) = texts.get(t.as_bytes()) {
        Py_IncRef(o.0);
        return Ok(Owned(o.0));
    }
    if texts.len() >= MAX_TEXTS {
        texts.clear();
    }
    let o = text(t)?;
    Py_IncRef(o.0);
    texts.insert(t.as_bytes().to_vec(), Owned(o.0));
    Ok(o)
}

unsafe fn kept_value(v: &Value<'_>) -> R<Owned> {
    match v.kept()? {
        Kept::Text(t) => shared_text(t),
        Kept::Int(n) => Owned::new(PyLong_FromUnsignedLongLong(n)),
        Kept::Float(d) => Owned::new(PyFloat_FromDouble(d)),
        Kept::Bool(b) => {
            let o = boolean(b);
            Py_IncRef(o);
            Ok(Owned(o))
        }
    }
}

unsafe fn put(d: &Owned, k: *mut PyObject, v: &Owned) -> R<()> {
    if PyDict_SetItem(d.0, k, v.0) != 0 {
        PyErr_Clear();
        return Err(());
    }
    Ok(())
}

/// The span's attribute dict: the kept keys, then on a run span the prefixed numbers; and
/// whether the operation's value is text (its last kept value was a string: a prefixed key
/// equal to it would get the same value again).
unsafe fn attrs(sp: &Span<'_>, c: &Config) -> R<(Owned, bool)> {
    let d = Owned::new(PyDict_New())?;
    let (mut run_span, mut op_text) = (false, false);
    for a in &sp.attrs {
        if let Some(&k) = c.keys.get(a.key) {
            let v = a.value.as_ref().ok_or(())?;
            put(&d, k, &kept_value(v)?)?;
            if k == c.op_key {
                op_text = matches!(v.kept(), Ok(Kept::Text(_)));
            }
            if a.key == c.on_key.as_slice() {
                // the last value wins, as in the dict `attrs.get(on_key) == on_value` reads
                run_span = matches!(v.kept(), Ok(Kept::Text(t)) if t.as_bytes() == c.on_value.as_slice());
            }
        }
    }
    if run_span && !c.prefixes.is_empty() {
        for a in &sp.attrs {
            if c.prefixes.iter().any(|p| a.key.starts_with(p)) {
                let v = a.value.as_ref().ok_or(())?;
                let k = text(std::str::from_utf8_unchecked(a.key))?;
                put(&d, k.0, &kept_value(v)?)?;
            }
        }
    }
    Ok((d, op_text))
}

/// One str per distinct id within a line: a span's parent id is the very object of its parent's
/// span id (and the spans of a trace share their trace id's), so the report's index lookups by
/// them find the hash cached and stop at the identity test (no compare of the text).
#[derive(Default)]
struct Ids<'a> {
    seen: HashMap<Cow<'a, str>, Owned, BuildHasherDefault<Fnv>>,
}

impl<'a> Ids<'a> {
    unsafe fn get(&mut self, id: &Cow<'a, str>) -> R<*mut PyObject> {
        if let Some(o) = self.seen.get(id) {
            return Ok(o.0);
        }
        let o = text(id)?;
        let p = o.0;
        self.seen.insert(id.clone(), o);
        Ok(p) // borrowed: the map holds it while the line is read, the span's field after
    }
}

unsafe fn make<'a>(sp: &Span<'a>, c: &Config, ids: &mut Ids<'a>) -> R<Owned> {
    let (trace_id, span_id) = (sp.trace_id.as_ref().ok_or(())?, sp.span_id.as_ref().ok_or(())?);
    let name = sp.name.as_ref().ok_or(())?;
    let (start, end) = (nanos(sp.start.as_ref().ok_or(())?)?, nanos(sp.end.as_ref().ok_or(())?)?);
    if trace_id.is_empty() || span_id.is_empty() {
        return Err(());
    }
    let (attrs, op_is_text) = attrs(sp, c)?;
    let events = match sp.events {
        None => Owned::new(PyList_New(0))?,
        Some(raw) => {
            let b = Owned::new(PyBytes_FromStringAndSize(raw.as_ptr() as *const c_char, raw.len() as Py_ssize_t))?;
            Owned::new(PyObject_CallFunctionObjArgs(c.events_fn, b.0, std::ptr::null_mut::<PyObject>()))?
        }
    };
    // the spans of one trace come together: one str for their trace id
    // the class's own allocator, called directly (``SpanRec.__new__(SpanRec)`` without the call
    // through the ``__new__`` wrapper): every field is set below
    let rec = Owned::new((c.tp_new)(c.span_rec, c.no_args, std::ptr::null_mut()))?;
    let n = &c.names;
    set(&rec, n[0], ids.get(trace_id)?)?;
    set(&rec, n[1], ids.get(span_id)?)?;
    match &sp.parent_id {
        Some(p) if !p.is_empty() => set(&rec, n[2], ids.get(p)?)?,
        _ => set(&rec, n[2], none())?,
    }
    set(&rec, n[3], shared_text(name)?.0)?;
    set(&rec, n[4], Owned::new(PyLong_FromUnsignedLongLong(start))?.0)?;
    set(&rec, n[5], Owned::new(PyLong_FromUnsignedLongLong(end))?.0)?;
    set(&rec, n[6], attrs.0)?;
    set(&rec, n[7], boolean(sp.error))?;
    set(&rec, n[8], events.0)?;
    // `SpanRec.__post_init__`: the operation unless a duplicate; a phase block
    let op = PyDict_GetItem(attrs.0, c.op_key);
    let dup = PyDict_GetItem(attrs.0, c.dup_key);
    let operation = if op_is_text && dup != boolean(true) { op } else { none() };
    set(&rec, n[9], operation)?;
    let phase = operation == none() && !PyDict_GetItem(attrs.0, c.phase_key).is_null() && name.starts_with("phase ");
    set(&rec, n[10], boolean(phase))?;
    Ok(rec)
}
