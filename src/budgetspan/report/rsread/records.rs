//! The `SpanRec`s of the spans read (`span.rs`): Python objects made through the C API.

use crate::config::{Config, WordHash};
use crate::ffi::*;
use crate::json::R;
use crate::span::{Kept, Span, Value};
use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::os::raw::c_char;

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

/// Field `i` of the new `SpanRec` (`config.field_setters`: its setter called directly).
unsafe fn set(o: &Owned, c: &Config, i: usize, v: *mut PyObject) -> R<()> {
    let failed = match &c.setters {
        Some(s) => (s[i].set)(s[i].descr.0, o.0, v) != 0,
        None => PyObject_SetAttr(o.0, c.names[i], v) != 0,
    };
    if failed {
        PyErr_Clear();
        return Err(());
    }
    Ok(())
}

/// Kept texts are mostly a few values over and over (workflows, phases, models, operations, a
/// run's id on each of its spans): one str object each, so the report's later dict lookups and
/// comparisons on them find the hash cached and the same object. Bounded: cleared when full.
static mut TEXTS: Option<HashMap<Vec<u8>, Owned, BuildHasherDefault<WordHash>>> = None;
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

/// A run span's prefixed key (`budgetspan.limit.*`, `budgetspan.usage.*`: ~21 a run span, the
/// same few names on every run) as the one str per name of `shared_text`: its hash is kept, so
/// neither this dict nor `run_stats._limits_and_usage`'s lookups hash it again, and those find it
/// by identity. Measured gain (callgrind, `bench/bench_report.py`'s STAGES 1 minus 0 on the
/// 100k-span file): reading 3,289.7M -> 3,237.0M instructions (-0.5k a span), before the Python
/// side's saving.
unsafe fn prefixed_key(key: &[u8]) -> R<Owned> {
    // the key is a slice of the line, checked to be UTF-8, and ends at ASCII quotes
    shared_text(std::str::from_utf8_unchecked(key))
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
            if a.key == c.op_name.as_slice() {
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
                put(&d, prefixed_key(a.key)?.0, &kept_value(v)?)?;
            }
        }
    }
    Ok((d, op_text))
}

/// One str per distinct id within a line: a span's parent id is the very object of its parent's
/// span id (and the spans of a trace share their trace id's), so the report's index lookups by
/// them find the hash cached and stop at the identity test (no compare of the text).
pub struct Ids<'a> {
    seen: HashMap<Cow<'a, str>, Owned, BuildHasherDefault<WordHash>>,
}

/// Room for a line's ids from the start (a line holds ~30 spans: their span and parent ids,
/// a few trace ids), so the map is not grown and rehashed three or four times on every line.
const IDS_PER_LINE: usize = 64;

impl<'a> Ids<'a> {
    /// An empty map sized for one line (`IDS_PER_LINE`). Measured gain (callgrind,
    /// `bench/bench_report.py`'s STAGES 1 minus 0 on the 100k-span file): reading 3,115.2M ->
    /// 3,091.4M instructions.
    pub fn for_line() -> Self {
        Ids { seen: HashMap::with_capacity_and_hasher(IDS_PER_LINE, BuildHasherDefault::default()) }
    }

    /// The line's str for `id`: looked up and, when new, put in with one hash of the text.
    pub unsafe fn get(&mut self, id: &Cow<'a, str>) -> R<*mut PyObject> {
        match self.seen.entry(id.clone()) {
            Entry::Occupied(e) => Ok(e.get().0),
            // borrowed: the map holds it while the line is read, the span's field after
            Entry::Vacant(e) => Ok(e.insert(text(id)?).0),
        }
    }
}

pub unsafe fn make<'a>(sp: &Span<'a>, c: &Config, ids: &mut Ids<'a>) -> R<Owned> {
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
            called(PyObject_CallFunctionObjArgs(c.events_fn, b.0, std::ptr::null_mut::<PyObject>()))?
        }
    };
    // the spans of one trace come together: one str for their trace id
    // the class's own allocator, called directly (``SpanRec.__new__(SpanRec)`` without the call
    // through the ``__new__`` wrapper): every field is set below
    let rec = Owned::new((c.tp_new)(c.span_rec, c.no_args, std::ptr::null_mut()))?;
    set(&rec, c, 0, ids.get(trace_id)?)?;
    set(&rec, c, 1, ids.get(span_id)?)?;
    match &sp.parent_id {
        Some(p) if !p.is_empty() => set(&rec, c, 2, ids.get(p)?)?,
        _ => set(&rec, c, 2, none())?,
    }
    set(&rec, c, 3, shared_text(name)?.0)?;
    set(&rec, c, 4, Owned::new(PyLong_FromUnsignedLongLong(start))?.0)?;
    set(&rec, c, 5, Owned::new(PyLong_FromUnsignedLongLong(end))?.0)?;
    set(&rec, c, 6, attrs.0)?;
    set(&rec, c, 7, boolean(sp.error))?;
    set(&rec, c, 8, events.0)?;
    // `SpanRec.__post_init__`: the operation unless a duplicate; a phase block
    let op = PyDict_GetItem(attrs.0, c.op_key);
    let dup = PyDict_GetItem(attrs.0, c.dup_key);
    let operation = if op_is_text && dup != boolean(true) { op } else { none() };
    set(&rec, c, 9, operation)?;
    let phase = operation == none() && !PyDict_GetItem(attrs.0, c.phase_key).is_null() && name.starts_with("phase ");
    set(&rec, c, 10, boolean(phase))?;
    Ok(rec)
}
