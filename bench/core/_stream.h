/* What the native core's workload generators share (issue 17): bench/core/_scan.c (the
 * ScanStream type, the kscand, linear-scan and kmap generators) and bench/core/_guest.c (the
 * replay of a recorded real guest). An operation is queued as a GOp with the fields of
 * bench.ops' tuples; the stream hands the queue out (ScanStream_next, scan_stream_pull). */
#ifndef SHADOWBENCH_STREAM_H
#define SHADOWBENCH_STREAM_H

#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

typedef uint64_t u64;
typedef int64_t i64;

/* bench.ops' operation kinds */
enum { O_STORE = 0, O_BTR = 1, O_LOAD = 3, O_INVLPG = 4, O_CR3 = 5, O_COMPUTE = 6, O_MARK = 7 };
/* the instruction names a stream's operations carry (interned by the stream, _scan.c
 * insn_text): the scan workloads' six, then the store classes a recording keeps
 * (bench/record/replay.py STORE_CLASSES) */
enum { I_MOV, I_BTR, I_COMPUTE, I_CR3, I_INVLPG, I_MARK, I_XCHG, I_CMPXCHG, I_CMPXCHG8B, I_OR,
       I_AND, N_INSN };
/* bench.machine.memory's READ32 / READ_ENTRY (a logged read's method) */
enum { M_READ32 = 0, M_READ_ENTRY = 1 };
/* a read of guest memory as the stream makes it (logged where the caller logs reads) */
typedef int (*stream_read_fn)(void *ctx, int method, u64 gpa, int pae, u64 *value);

#define PAGE_OFFSET_ 0xC0000000ULL

/* ---------------------------------------------------------------- operations queued for next() */
typedef struct {
    int kind, cpu;
    u64 addr;
    i64 arg;
    u64 value;
    PyObject *insn; /* borrowed: one of the stream's interned names */
} GOp;

typedef struct {
    GOp *v;
    Py_ssize_t n, cap;
} OpVec;

static inline int vec_push(OpVec *q, int kind, int cpu, u64 addr, i64 arg, u64 value,
                           PyObject *insn) {
    if (q->n == q->cap) {
        Py_ssize_t cap = q->cap ? 2 * q->cap : 64;
        GOp *v = realloc(q->v, cap * sizeof(GOp));
        if (!v) {
            PyErr_NoMemory();
            return -1;
        }
        q->v = v;
        q->cap = cap;
    }
    GOp *o = &q->v[q->n++];
    o->kind = kind;
    o->cpu = cpu;
    o->addr = addr;
    o->arg = arg;
    o->value = value;
    o->insn = insn;
    return 0;
}

static inline int vec_extend(OpVec *q, const GOp *from, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (vec_push(q, from[i].kind, from[i].cpu, from[i].addr, from[i].arg, from[i].value,
                     from[i].insn) < 0)
            return -1;
    return 0;
}

/* ------------------------------------------------------------------- reading a spec dict */
static inline PyObject *spec_item(PyObject *spec, const char *key) {
    PyObject *v = PyDict_GetItemString(spec, key); /* borrowed */
    if (!v && !PyErr_Occurred())
        PyErr_Format(PyExc_KeyError, "ScanStream spec has no %s", key);
    return v;
}

static inline int spec_ll(PyObject *spec, const char *key, long long *out) {
    PyObject *v = spec_item(spec, key);
    if (!v)
        return -1;
    *out = PyLong_AsLongLong(v);
    return PyErr_Occurred() ? -1 : 0;
}

static inline int spec_u64(PyObject *spec, const char *key, u64 *out) {
    PyObject *v = spec_item(spec, key);
    if (!v)
        return -1;
    *out = PyLong_AsUnsignedLongLong(v);
    return PyErr_Occurred() ? -1 : 0;
}

/* ------------------------------------------------- bench/core/_guest.c: a recording's replay */
typedef struct GuestReplay GuestReplay;
/* the replay described by ``spec`` (bench/core/generators.py guest_stream), or NULL (error set) */
GuestReplay *guest_new(PyObject *spec, PyObject *const insn[N_INSN]);
/* queue the next operations in ``out`` (empty on entry), reading guest memory with ``read``:
 * 1, 0 at the end of the replay, -1 on an error */
int guest_refill(GuestReplay *g, OpVec *out, stream_read_fn read, void *ctx);
/* the Replayer's state at the end, for its on_done (a new dict), or NULL */
PyObject *guest_final_state(GuestReplay *g);
void guest_free(GuestReplay *g);

#endif
