//! What the Python side hands over once per `Keep`, read once into Rust values.

use crate::ffi::*;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::raw::c_void;

/// What the Python side hands over once per `Keep` (`fastread._rs_state`), kept alive for
/// good (a handful per process): the kept keys (their own str objects, so each span's dict is
/// keyed by the very strings the report looks up), and what makes a `SpanRec`.
pub struct Config {
    pub keys: HashMap<Vec<u8>, *mut PyObject, BuildHasherDefault<Fnv>>,
    pub prefixes: Vec<Vec<u8>>,
    pub on_key: Vec<u8>,
    pub on_value: Vec<u8>,
    pub span_rec: *mut PyObject,
    pub tp_new: NewFunc,
    pub no_args: *mut PyObject,
    pub events_fn: *mut PyObject,
    pub names: [*mut PyObject; 11],
    pub op_key: *mut PyObject,
    pub op_name: Vec<u8>, // its text: the kept keys may be equal strings, not this object
    pub dup_key: *mut PyObject,
    pub phase_key: *mut PyObject,
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
        op_name: utf8(item(8))?,
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
