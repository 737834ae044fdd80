/* D-Bus message bodies straight to the JSON text of their decoded arguments.
 *
 * The output equals, byte for byte, what the Python side writes for the same
 * body: dbus-fast's decoding passed through wire.jsonable and msgspec's JSON
 * encoder. Anything this encoder cannot reproduce exactly is refused (-1) and
 * the caller falls back to Python.
 */
#ifndef IPCPROXY_DBUS_ARGS_H
#define IPCPROXY_DBUS_ARGS_H

#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

/* A growable output buffer; p is malloc/realloc'ed and freed by its owner with free(). */
typedef struct { char *p; size_t len; size_t cap; } jbuf;

/* Ensure cap >= len + extra: 0 ok, -1 out of memory (no Python error set). */
int jbuf_reserve(jbuf *b, size_t extra);

/* Write the 2n lowercase hex digits of src[0:n] to dst (no NUL). */
void hex_encode(char *dst, const unsigned char *src, size_t n);

/* Append the JSON array of the decoded body to out. Returns 0 on success; -1 if
   the body does not match the signature, is malformed, or uses something this
   encoder does not reproduce exactly (out->len is then restored to its value on
   entry and the caller falls back to Python); -2 out of memory (out->len
   restored too). Never sets a Python error, never reads outside
   body[0:body_len], needs no GIL. */
int args_to_json(jbuf *out, const unsigned char *body, size_t body_len,
                 const char *sig, size_t sig_len, int little_endian);

/* METH_FASTCALL: (body: bytes-like, signature: str, little_endian: bool) -> bytes | None */
PyObject *py_args_to_json(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

#endif /* IPCPROXY_DBUS_ARGS_H */
