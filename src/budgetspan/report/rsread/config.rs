//! What the Python side hands over once per `Keep`, read once into Rust values.

use crate::ffi::*;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::raw::c_void;

/// What the Python side hands over once per `Keep` (`fastread._rs_state`), kept alive for
/// good (a handful per process): the kept keys (their own str objects, so each span's dict is
/// keyed by the very strings the report looks up), and what makes a `SpanRec`.
pub struct Config {
    pub keys: HashMap<Vec<u8>, *mut PyObject, BuildHasherDefault<WordHash>>,
    pub prefixes: Vec<Vec<u8>>,
    pub on_key: Vec<u8>,
    pub on_value: Vec<u8>,
    pub span_rec: *mut PyObject,
    pub tp_new: NewFunc,
    pub no_args: *mut PyObject,
    pub events_fn: *mut PyObject,
    pub names: [*mut PyObject; 11],
    pub setters: Option<[FieldSetter; 11]>, // None: each field set by `PyObject_SetAttr`
    pub op_key: *mut PyObject,
    pub op_name: Vec<u8>, // its text: the kept keys may be equal strings, not this object
    pub dup_key: *mut PyObject,
    pub phase_key: *mut PyObject,
}

/// The hasher of the reader's own maps (kept keys, shared texts, a line's ids): the keys are
/// short and ours, and none of these maps is a Python dict. The std hasher (SipHash) was 7% of
/// the reader's work; FNV-1a after it, a byte at a time, still a chain of one multiply per byte.
#[derive(Default)]
pub struct WordHash(u64);

const WORD_MUL: u64 = 0x9e37_79b9_7f4a_7c15; // odd, bits spread (2**64 / the golden ratio)

/// `h` with `bytes` folded in eight at a time (the last word zero-padded): one multiply per
/// word instead of one per byte (attribute keys are ~20-30 bytes, ids 16 and 32, looked up or
/// hashed once or more per attribute and per span). Measured gain (callgrind,
/// `bench/bench_report.py`'s STAGES 1 minus 0 on the 100k-span file), with `Ids::get`'s one hash
/// per new id: reading 3,237.0M -> 3,115.2M instructions (-1.2k a span).
fn mix_words(mut h: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = (h.rotate_left(23) ^ u64::from_le_bytes(w.try_into().unwrap_or([0; 8]))).wrapping_mul(WORD_MUL);
    }
    let rest = words.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    // the length goes in with the last word: "ab" and "ab\0" differ
    let tail = u64::from_le_bytes(last) ^ ((bytes.len() as u64) << 56);
    (h.rotate_left(23) ^ tail).wrapping_mul(WORD_MUL)
}

impl Hasher for WordHash {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = mix_words(self.0, bytes);
    }

    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0.rotate_left(23) ^ i as u64).wrapping_mul(WORD_MUL);
    }

    fn finish(&self) -> u64 {
        // the table picks buckets by the low bits: fold the high ones (most mixed) into them
        self.0 ^ (self.0 >> 29)
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
        setters: field_setters(PyTuple_GetItem(item(5), 0), &names),
        op_key: item(8),
        op_name: utf8(item(8))?,
        dup_key: item(9),
        phase_key: item(10),
    })
}

/// One `SpanRec` field's descriptor (a getset descriptor on the compiled class, a member
/// descriptor on the pure dataclass's slots) and its type's `tp_descr_set`.
pub struct FieldSetter {
    pub set: DescrSetFunc,
    pub descr: Owned, // kept for good, as the config
}

/// The descriptor `_PyType_Lookup` finds for `name`: in the first class of `mro` whose own
/// dict holds it. None if none does, or on any error but a missing key.
unsafe fn mro_lookup(mro: *mut PyObject, name: *mut PyObject) -> Option<Owned> {
    let n = PyTuple_Size(mro);
    if n < 0 {
        PyErr_Clear();
        return None;
    }
    for i in 0..n {
        let dict = Owned::new(PyObject_GetAttrString(PyTuple_GetItem(mro, i), c"__dict__".as_ptr())).ok()?;
        let found = PyObject_GetItem(dict.0, name);
        if !found.is_null() {
            return Some(Owned(found));
        }
        let missing = PyErr_ExceptionMatches(PyExc_KeyError) != 0;
        PyErr_Clear();
        if !missing {
            return None;
        }
    }
    None
}

/// Each `SpanRec` field set by calling its descriptor's `tp_descr_set` directly: what
/// `PyObject_SetAttr` ends in for a class with the generic `__setattr__` (intern the name, walk the
/// MRO with `_PyType_Lookup`, then the same call), without the walk per field (11 per span). Only
/// when the class's `tp_setattro` is `PyObject_GenericSetAttr` and every field is found in the MRO
/// as a descriptor with a setter (the compiled class's getset descriptors, the dataclass's slots);
/// else None, and `PyObject_SetAttr` sets them. The same setter runs with the same arguments, so
/// the same checks and errors (Err: the line is read again). The class is not changed after it is
/// made. Measured gain (callgrind, `bench/bench_report.py`'s STAGES 1 minus 0 on the 100k-span
/// file): reading 3,414.8M -> 3,289.7M instructions (-1.25k a span, -3.7%).
unsafe fn field_setters(cls: *mut PyObject, names: &[*mut PyObject; 11]) -> Option<[FieldSetter; 11]> {
    let generic: SetAttroFunc = PyObject_GenericSetAttr;
    let setattro = PyType_GetSlot(cls, PY_TP_SETATTRO);
    if setattro.is_null() || setattro != generic as *mut c_void {
        PyErr_Clear();
        return None;
    }
    let mro = Owned::new(PyObject_GetAttrString(cls, c"__mro__".as_ptr())).ok()?;
    let mut out = Vec::with_capacity(names.len());
    for &name in names {
        let descr = mro_lookup(mro.0, name)?;
        let kind = Owned::new(PyObject_Type(descr.0)).ok()?;
        let set = PyType_GetSlot(kind.0, PY_TP_DESCR_SET);
        if set.is_null() {
            PyErr_Clear(); // no setter, or a static type's slot unreadable (before 3.10)
            return None;
        }
        out.push(FieldSetter { set: std::mem::transmute::<*mut c_void, DescrSetFunc>(set), descr });
    }
    out.try_into().ok()
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
