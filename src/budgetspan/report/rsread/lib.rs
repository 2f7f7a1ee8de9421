//! `budgetspan.report._native._rsread`: the report's reading of one OTLP JSON line, in Rust.
//!
//! A fast path only. `read_line(line, state)` returns the line's spans as `SpanRec`s, exactly as
//! `fastread.parse_line_fast` gives them, or None: "read again", and the Python reading reads
//! the line or names what is wrong with it (so every bad-line message stays the Python one).
//! It returns None for anything it does not read exactly the Python way: invalid UTF-8, a type
//! it does not expect, a key seen twice, escaped keys, lone surrogates, number literals with an
//! exponent or longer than 18 characters, deep nesting, an attribute value the Python reading
//! reads by its checked path. Why it pays: the Python reading makes a msgspec struct per
//! attribute and runs a statement per attribute; here the kept attributes go straight into the
//! span's dict, keyed by the report's own (interned) key strings, and the others are only
//! scanned. Measured gain (callgrind, bench/README.md "Ninth stop"): reading the 10k-span
//! benchmark file 852M -> 592M instructions (-26k a span); the whole report 1,266M -> 987M (10k
//! spans, 2.08x -> 1.62x the orjson loop) and 9,723M -> 7,020M (100k, 2.00x -> 1.44x); CPU time
//! 1.9x the loop at 10k and 100k, 2.1x at 1M (it was 2.7x, 3.0x, 3.6x at the same load).

mod config;
mod ffi;
mod json;
mod records;
mod span;

use ffi::*;
use std::os::raw::c_char;

const SOURCE: &[u8] = concat!(
    include_str!("lib.rs"),
    "\0",
    include_str!("ffi.rs"),
    "\0",
    include_str!("json.rs"),
    "\0",
    include_str!("span.rs"),
    "\0",
    include_str!("records.rs"),
    "\0",
    include_str!("config.rs")
)
.as_bytes();

unsafe extern "C" fn read_line(
    _m: *mut PyObject,
    args: *const *mut PyObject,
    nargs: Py_ssize_t,
) -> *mut PyObject {
    if nargs != 2 {
        PyErr_SetString(PyExc_TypeError, c"read_line(line, state)".as_ptr());
        return std::ptr::null_mut();
    }
    let (line, state) = (*args, *args.add(1));
    let mut buf: *mut c_char = std::ptr::null_mut();
    let mut len: Py_ssize_t = 0;
    if PyBytes_AsStringAndSize(line, &mut buf, &mut len) != 0 {
        return std::ptr::null_mut(); // not bytes: a programming error, raised
    }
    let bytes = std::slice::from_raw_parts(buf as *const u8, len as usize);
    let config = match config::config_for(state) {
        Some(c) => c,
        None => {
            PyErr_SetString(PyExc_TypeError, c"read_line: a bad state tuple".as_ptr());
            return std::ptr::null_mut();
        }
    };
    match span::read(bytes, config) {
        Ok(list) => list.into_raw(),
        Err(()) if !INTERRUPT[0].is_null() => {
            let [t, v, tb] = std::mem::replace(&mut *std::ptr::addr_of_mut!(INTERRUPT), [std::ptr::null_mut(); 3]);
            PyErr_Restore(t, v, tb); // a KeyboardInterrupt in the events' reading: raised
            std::ptr::null_mut()
        }
        Err(()) => {
            let none = none();
            Py_IncRef(none);
            none
        }
    }
}

/// The bytes of the sources this library was built from: the loader compares them with the
/// files on disk and uses the library only while they are equal.
unsafe extern "C" fn source(
    _m: *mut PyObject,
    _args: *const *mut PyObject,
    _nargs: Py_ssize_t,
) -> *mut PyObject {
    PyBytes_FromStringAndSize(SOURCE.as_ptr() as *const c_char, SOURCE.len() as Py_ssize_t)
}

static mut METHODS: [PyMethodDef; 3] = [
    PyMethodDef {
        ml_name: c"read_line".as_ptr(),
        ml_meth: Some(read_line),
        ml_flags: METH_FASTCALL,
        ml_doc: c"read_line(line: bytes, state: tuple) -> list[SpanRec] | None (None: read again)".as_ptr(),
    },
    PyMethodDef {
        ml_name: c"source".as_ptr(),
        ml_meth: Some(source),
        ml_flags: METH_FASTCALL,
        ml_doc: c"the source bytes this library was built from".as_ptr(),
    },
    PyMethodDef {
        ml_name: std::ptr::null(),
        ml_meth: None,
        ml_flags: 0,
        ml_doc: std::ptr::null(),
    },
];

static mut MODULE: PyModuleDef = PyModuleDef {
    m_base: PyModuleDef_Base {
        ob_refcnt: 1,
        ob_type: std::ptr::null_mut(),
        m_init: std::ptr::null_mut(),
        m_index: 0,
        m_copy: std::ptr::null_mut(),
    },
    m_name: c"budgetspan.report._native._rsread".as_ptr(),
    m_doc: c"The report's reading of one OTLP JSON line, in Rust (a fast path only).".as_ptr(),
    m_size: -1,
    m_methods: std::ptr::null_mut(),
    m_slots: std::ptr::null_mut(),
    m_traverse: std::ptr::null_mut(),
    m_clear: std::ptr::null_mut(),
    m_free: std::ptr::null_mut(),
};

#[no_mangle]
pub unsafe extern "C" fn PyInit__rsread() -> *mut PyObject {
    let def = std::ptr::addr_of_mut!(MODULE);
    (*def).m_methods = std::ptr::addr_of_mut!(METHODS) as *mut PyMethodDef;
    PyModule_Create2(def, PYTHON_API_VERSION)
}
