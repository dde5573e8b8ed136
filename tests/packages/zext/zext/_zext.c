#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <zlib.h>

static PyObject *shipenv_zlib_version(PyObject *self, PyObject *args) {
    return PyUnicode_FromString(zlibVersion());
}

static PyMethodDef methods[] = {
    {"zlib_version", shipenv_zlib_version, METH_NOARGS, "Version of the zlib this module links."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_zext", NULL, -1, methods};

PyMODINIT_FUNC PyInit__zext(void) { return PyModule_Create(&module); }
