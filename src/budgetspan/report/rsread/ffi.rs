//! The few CPython C-API functions the reader calls, declared by hand.
//!
//! Why not PyO3: the machines this project builds on reach no crate registry, so the crate has
//! no dependencies at all and is built by `rustc` alone (`report/rsread_build.py`). Only
//! functions of the stable ABI are used, plus `PyModuleDef`'s layout, which is fixed.

#![allow(non_camel_case_types, non_snake_case, dead_code)]

use std::os::raw::{c_char, c_int, c_void};

pub type Py_ssize_t = isize;

#[repr(C)]
pub struct PyObject {
    _private: [u8; 0],
}

pub type PyCFunctionFast =
    unsafe extern "C" fn(*mut PyObject, *const *mut PyObject, Py_ssize_t) -> *mut PyObject;

#[repr(C)]
pub struct PyMethodDef {
    pub ml_name: *const c_char,
    pub ml_meth: Option<PyCFunctionFast>,
    pub ml_flags: c_int,
    pub ml_doc: *const c_char,
}

#[repr(C)]
pub struct PyModuleDef_Base {
    pub ob_refcnt: Py_ssize_t,
    pub ob_type: *mut c_void,
    pub m_init: *mut c_void,
    pub m_index: Py_ssize_t,
    pub m_copy: *mut PyObject,
}

#[repr(C)]
pub struct PyModuleDef {
    pub m_base: PyModuleDef_Base,
    pub m_name: *const c_char,
    pub m_doc: *const c_char,
    pub m_size: Py_ssize_t,
    pub m_methods: *mut PyMethodDef,
    pub m_slots: *mut c_void,
    pub m_traverse: *mut c_void,
    pub m_clear: *mut c_void,
    pub m_free: *mut c_void,
}

pub type NewFunc = unsafe extern "C" fn(*mut PyObject, *mut PyObject, *mut PyObject) -> *mut PyObject;
pub type DescrSetFunc = unsafe extern "C" fn(*mut PyObject, *mut PyObject, *mut PyObject) -> c_int;
pub type SetAttroFunc = unsafe extern "C" fn(*mut PyObject, *mut PyObject, *mut PyObject) -> c_int;
pub const PY_TP_DESCR_SET: c_int = 55; // typeslots.h
pub const PY_TP_NEW: c_int = 65;
pub const PY_TP_SETATTRO: c_int = 69;
pub const METH_FASTCALL: c_int = 0x0080;
pub const PYTHON_API_VERSION: c_int = 1013;

extern "C" {
    pub static mut _Py_NoneStruct: PyObject;
    pub static mut _Py_TrueStruct: PyObject;
    pub static mut _Py_FalseStruct: PyObject;
    pub static mut PyExc_TypeError: *mut PyObject;
    pub static mut PyExc_Exception: *mut PyObject;
    pub static mut PyExc_KeyError: *mut PyObject;

    pub fn PyModule_Create2(def: *mut PyModuleDef, apiver: c_int) -> *mut PyObject;
    pub fn Py_IncRef(o: *mut PyObject);
    pub fn Py_DecRef(o: *mut PyObject);
    pub fn PyErr_Clear();
    pub fn PyErr_SetString(t: *mut PyObject, msg: *const c_char);
    pub fn PyErr_ExceptionMatches(exc: *mut PyObject) -> c_int;
    pub fn PyErr_Fetch(t: *mut *mut PyObject, v: *mut *mut PyObject, tb: *mut *mut PyObject);
    pub fn PyErr_Restore(t: *mut PyObject, v: *mut PyObject, tb: *mut PyObject);

    pub fn PyBytes_AsStringAndSize(o: *mut PyObject, buf: *mut *mut c_char, len: *mut Py_ssize_t) -> c_int;
    pub fn PyBytes_FromStringAndSize(s: *const c_char, len: Py_ssize_t) -> *mut PyObject;
    pub fn PyUnicode_FromStringAndSize(s: *const c_char, len: Py_ssize_t) -> *mut PyObject;
    pub fn PyUnicode_AsUTF8AndSize(o: *mut PyObject, len: *mut Py_ssize_t) -> *const c_char;
    pub fn PyLong_FromUnsignedLongLong(v: u64) -> *mut PyObject;
    pub fn PyFloat_FromDouble(v: f64) -> *mut PyObject;
    pub fn PyTuple_Size(o: *mut PyObject) -> Py_ssize_t;
    pub fn PyTuple_GetItem(o: *mut PyObject, i: Py_ssize_t) -> *mut PyObject;
    pub fn PyDict_New() -> *mut PyObject;
    pub fn PyTuple_New(n: Py_ssize_t) -> *mut PyObject;
    pub fn PyType_GetSlot(t: *mut PyObject, slot: c_int) -> *mut c_void;
    pub fn PyDict_SetItem(d: *mut PyObject, k: *mut PyObject, v: *mut PyObject) -> c_int;
    pub fn PyDict_GetItem(d: *mut PyObject, k: *mut PyObject) -> *mut PyObject;
    pub fn PyList_New(n: Py_ssize_t) -> *mut PyObject;
    pub fn PyList_Append(l: *mut PyObject, v: *mut PyObject) -> c_int;
    pub fn PyObject_SetAttr(o: *mut PyObject, name: *mut PyObject, v: *mut PyObject) -> c_int;
    pub fn PyObject_GenericSetAttr(o: *mut PyObject, name: *mut PyObject, v: *mut PyObject) -> c_int;
    pub fn PyObject_GetAttrString(o: *mut PyObject, name: *const c_char) -> *mut PyObject;
    pub fn PyObject_GetItem(o: *mut PyObject, key: *mut PyObject) -> *mut PyObject;
    pub fn PyObject_Type(o: *mut PyObject) -> *mut PyObject;
    pub fn PyObject_Call(f: *mut PyObject, args: *mut PyObject, kw: *mut PyObject) -> *mut PyObject;
    pub fn PyObject_CallFunctionObjArgs(f: *mut PyObject, ...) -> *mut PyObject;
}

/// An owned reference, released when dropped: a line read half-way and refused leaks nothing.
pub struct Owned(pub *mut PyObject);

impl Owned {
    /// Takes a new reference; a NULL (a failed call) is an error, cleared: the line is read again.
    pub fn new(p: *mut PyObject) -> Result<Owned, ()> {
        if p.is_null() {
            unsafe { PyErr_Clear() };
            Err(())
        } else {
            Ok(Owned(p))
        }
    }

    pub fn into_raw(self) -> *mut PyObject {
        let p = self.0;
        std::mem::forget(self);
        p
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        unsafe { Py_DecRef(self.0) }
    }
}

/// An error that is not an `Exception` (KeyboardInterrupt, SystemExit) raised by the Python
/// code the reader calls (the events' reading): set aside, not cleared, and raised again by
/// `read_line` once the line's objects are released, as the Python reading would let it through.
pub static mut INTERRUPT: [*mut PyObject; 3] = [std::ptr::null_mut(); 3];

/// A failed call into Python code: Err, the error cleared, or kept for `read_line` (above).
pub unsafe fn called(p: *mut PyObject) -> Result<Owned, ()> {
    if p.is_null() && PyErr_ExceptionMatches(PyExc_Exception) == 0 {
        let [t, v, tb] = &mut *std::ptr::addr_of_mut!(INTERRUPT);
        PyErr_Fetch(t, v, tb);
        return Err(());
    }
    Owned::new(p)
}

pub fn none() -> *mut PyObject {
    std::ptr::addr_of_mut!(_Py_NoneStruct)
}

pub fn boolean(b: bool) -> *mut PyObject {
    if b {
        std::ptr::addr_of_mut!(_Py_TrueStruct)
    } else {
        std::ptr::addr_of_mut!(_Py_FalseStruct)
    }
}
