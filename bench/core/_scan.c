/* The workloads' generators in C (issue 17): kscand (workloads/kscand.py, AgingZone) and
 * linear-scan (workloads/linear_scan.py, AddressOrderScanner), with page_referenced through
 * kmap_atomic(KM_PTE2) (workloads/_scan.py referenced_ops, workloads/_kmap.py Kernel.kmap_fn),
 * the user processes (workloads/_users.py AccessStream, UserRunner) and the jiffy timeline
 * (workloads/_scan.py ScanWorkload._timeline); and the kmap microbenchmark (workloads/kmap.py
 * KmapBench._ops, with Kernel.kmap / kunmap on every CPU's KM_PTE2 slot). A ScanStream also
 * hands out the guest workload's replay of a recording, which bench/core/_guest.c makes.
 *
 * A ScanStream is an iterator of the very operation tuples the Python generator yields, in the
 * same order, and it reads guest memory at the same points through the GuestMemory's own
 * read32/read_entry methods, so a recording's read log (bench.recording) is the same too. It
 * draws the user accesses from the same Mersenne Twister as Python's random.Random (its state
 * taken with getstate() and given back with the final state). The rules and their kernel sources
 * are documented in the Python modules named above; every function here names the one it mirrors.
 * bench/core/generators.py builds a stream from the Python objects (and decides when one may be
 * used); tests/test_native_core.py requires both to give identical operations, reads, sizes and
 * final state. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_stream.h"

static const char *insn_text[N_INSN] = {"mov", "btr", "compute", "mov-cr3", "invlpg", "mark",
                                        "xchg", "cmpxchg", "cmpxchg8b", "or", "and"};
#define A_BIT_ 0x20ULL

/* ------------------------------------ random.Random's Mersenne Twister (CPython's MT19937) */
typedef struct {
    uint32_t s[624];
    int i;
} MT;

static uint32_t mt_next(MT *m) {
    static const uint32_t mag01[2] = {0x0U, 0x9908b0dfU};
    uint32_t y;
    if (m->i >= 624) {
        int k;
        for (k = 0; k < 624 - 397; k++) {
            y = (m->s[k] & 0x80000000U) | (m->s[k + 1] & 0x7fffffffU);
            m->s[k] = m->s[k + 397] ^ (y >> 1) ^ mag01[y & 1U];
        }
        for (; k < 623; k++) {
            y = (m->s[k] & 0x80000000U) | (m->s[k + 1] & 0x7fffffffU);
            m->s[k] = m->s[k + (397 - 624)] ^ (y >> 1) ^ mag01[y & 1U];
        }
        y = (m->s[623] & 0x80000000U) | (m->s[0] & 0x7fffffffU);
        m->s[623] = m->s[396] ^ (y >> 1) ^ mag01[y & 1U];
        m->i = 0;
    }
    y = m->s[m->i++];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680U;
    y ^= (y << 15) & 0xefc60000U;
    y ^= (y >> 18);
    return y;
}

/* random.random(): 53 bits from two draws (CPython random_random) */
static double mt_random(MT *m) {
    uint32_t a = mt_next(m) >> 5, b = mt_next(m) >> 6;
    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}

/* getstate()'s (3, (624 words..., index), gauss_next) -> MT */
static int mt_set(MT *m, PyObject *state) {
    PyObject *words = PyTuple_Check(state) && PyTuple_GET_SIZE(state) == 3
                          ? PyTuple_GET_ITEM(state, 1) : NULL;
    if (!words || !PyTuple_Check(words) || PyTuple_GET_SIZE(words) != 625) {
        PyErr_SetString(PyExc_ValueError, "ScanStream: not a random.Random state");
        return -1;
    }
    for (int k = 0; k < 624; k++)
        m->s[k] = (uint32_t)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(words, k));
    m->i = (int)PyLong_AsLong(PyTuple_GET_ITEM(words, 624));
    if (PyErr_Occurred())
        return -1;
    if (m->i < 0 || m->i > 624) {
        PyErr_SetString(PyExc_ValueError, "ScanStream: bad random.Random state index");
        return -1;
    }
    return 0;
}

/* MT -> the state setstate() takes back (gauss_next None: AccessStream never draws a gauss) */
static PyObject *mt_get(const MT *m) {
    PyObject *words = PyTuple_New(625);
    if (!words)
        return NULL;
    for (int k = 0; k < 624; k++)
        PyTuple_SET_ITEM(words, k, PyLong_FromUnsignedLong(m->s[k]));
    PyTuple_SET_ITEM(words, 624, PyLong_FromLong(m->i));
    return Py_BuildValue("(iNO)", 3, words, Py_None);
}

/* ------------------------------------------------------------ buffers of the Python arrays */
typedef struct {
    Py_buffer view;
    int held;
} Buf;

static int buf_get(Buf *b, PyObject *obj, Py_ssize_t itemsize, const char *what) {
    if (PyObject_GetBuffer(obj, &b->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    b->held = 1;
    if (b->view.itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "ScanStream: %s has items of %zd bytes, not %zd", what,
                     b->view.itemsize, itemsize);
        return -1;
    }
    return 0;
}

static void buf_release(Buf *b) {
    if (b->held) {
        PyBuffer_Release(&b->view);
        b->held = 0;
    }
}

#define BUF_LEN(b) ((b).view.len / (b).view.itemsize)

/* ----------------------------------------------------- workloads/_users.py: AccessStream */
enum { P_UNIFORM = 0, P_ZIPF = 1, P_SEQUENTIAL = 2, P_LACKEY = 3 };

typedef struct {
    int kind;
    MT mt;
    long long pages, pos, stride, shift;
    double wf;
    Buf cdf, addrs, writes;
} Access;

/* AccessStream.take(1): (page index, offset, is_write) */
static void access_next(Access *a, long long *idx, u64 *off, int *write) {
    *off = 0;
    if (a->pages < 1) { /* a process without pages: Python's take fails too */
        *idx = -1;
        *write = 0;
        return;
    }
    switch (a->kind) {
    case P_UNIFORM:
        *idx = (long long)(mt_random(&a->mt) * (double)a->pages);
        *write = mt_random(&a->mt) < a->wf;
        return;
    case P_ZIPF: {
        const double *cdf = a->cdf.view.buf;
        Py_ssize_t lo = 0, hi = BUF_LEN(a->cdf);
        double x = mt_random(&a->mt) * cdf[hi - 1];
        while (lo < hi) { /* bisect.bisect_left */
            Py_ssize_t mid = (lo + hi) / 2;
            if (cdf[mid] < x)
                lo = mid + 1;
            else
                hi = mid;
        }
        long long rank = lo >= a->pages ? a->pages - 1 : lo;
        *idx = (rank * a->stride + a->shift) % a->pages;
        *write = mt_random(&a->mt) < a->wf;
        return;
    }
    case P_SEQUENTIAL:
        *idx = a->pos++ % a->pages;
        *write = mt_random(&a->mt) < a->wf;
        return;
    default: { /* lackey: the trace folded into the mapped pages, cyclically */
        Py_ssize_t len = BUF_LEN(a->addrs);
        u64 addr = ((const u64 *)a->addrs.view.buf)[a->pos];
        *idx = (long long)((addr >> 12) % (u64)a->pages);
        *off = addr & 0xFFC;
        *write = ((const unsigned char *)a->writes.view.buf)[a->pos] != 0;
        a->pos = (a->pos + 1) % len;
        return;
    }
    }
}

/* ------------------------------------------------------- the stream: every piece of state */
typedef stream_read_fn scan_read_fn;

enum { W_KSCAND = 0, W_LINEAR = 1, W_KMAP = 2, W_GUEST = 3 };

typedef struct {
    PyObject_HEAD
    int workload;
    int done;
    PyObject *insn[N_INSN];
    PyObject *mem, *read32, *read_entry; /* the GuestMemory, its read methods' names */
    PyObject *sizes, *on_done, *passes_key;
    long long at;   /* the operations executed before the current pull (run_tee) */
    /* run_tee's reader (scan_stream_attach): guest memory read in C, the reads logged here */
    scan_read_fn reader;
    void *reader_ctx;
    int log_reads; /* with a reader: log the reads (run_tee), or not (a policy's own run) */
    struct {
        u64 *at, *gpa, *value;
        unsigned char *method, *arg;
        Py_ssize_t n, cap;
    } reads;
    long long jiffy, jiffies, passes;
    int cpus, pae;
    /* kmap_atomic(KM_PTE2) on CPU 0 (workloads/_kmap.py Kernel.kmap_fn) */
    long long lowmem_pages;
    u64 slot_vaddr, slot_pte_kva, slot_pte_gpa, kmap_prot;
    int skip_same, check_same, map_flush;
    long long kmap_gap, visit_gap;
    GOp *clear;
    Py_ssize_t nclear;
    PyObject *clear_insns; /* keeps the clear operations' instruction names */
    /* UserRunner */
    int nprocs;
    u64 *cr3s;
    Buf *vaddrs;
    Access *access;
    int **cpu_procs, *ncpu_procs;
    long long *turn, *ran, *loaded;
    double *carry, per_jiffy;
    long long timeslice;
    OpVec *lists; /* per CPU: the user operations of the current jiffy */
    Py_ssize_t *due_done;
    int nothers, *others;
    /* a pass in progress */
    int in_pass;
    long long visit_i, total;
    /* AgingZone */
    Buf nxt_b, prv_b, pte_b, chain_b, count_b;
    int32_t *nxt, *prv;
    const i64 *pte_gpa, *chain;
    i64 *count; /* the 32 bucket counts (AgingZone.count, shared) */
    long long base, age_interval, age_next, need_scan, kachunk_every;
    long long nshared, mappings, pages, cache_pages, shared_cache_pages;
    long long max_age, min_interval, max_interval;
    int quirk, nlists, lists_lst[2], lists_src[2], li, age, bucket_open, in_chain, referenced;
    int requeue; /* the visited page moves when the next visit is asked for, as in Python */
    long long todo, page, t, tend;
    /* AddressOrderScanner */
    int lq;
    Py_ssize_t li_pte;
    Buf *ptes;
    long long *shared_from, first, interval, all_ptes;
    /* KmapBench: the pages' addresses and ptes, each CPU's KM_PTE2 slot (vaddr, pte_kva,
     * pte_gpa) and its kunmap operations (s->clear from clear_at[cpu] to clear_at[cpu + 1]) */
    long long *k_vaddrs, *k_ptes, *k_slots, k_tables, k_per_table, k_warm, k_iterations, k_i;
    Py_ssize_t k_pages, *k_clear_at;
    int k_phase, k_marked;
    /* the guest workload's replay of a recording (bench/core/_guest.c) */
    GuestReplay *guest;
    /* the queue next() hands out */
    OpVec out;
    Py_ssize_t head;
} ScanStream;

static void stream_release(ScanStream *s) {
    buf_release(&s->nxt_b);
    buf_release(&s->prv_b);
    buf_release(&s->pte_b);
    buf_release(&s->chain_b);
    buf_release(&s->count_b);
    for (int q = 0; q < s->nprocs; q++) {
        if (s->vaddrs)
            buf_release(&s->vaddrs[q]);
        if (s->access) {
            buf_release(&s->access[q].cdf);
            buf_release(&s->access[q].addrs);
            buf_release(&s->access[q].writes);
        }
        if (s->ptes)
            buf_release(&s->ptes[q]);
    }
}

static void ScanStream_dealloc(ScanStream *s) {
    stream_release(s);
    for (int k = 0; k < N_INSN; k++)
        Py_XDECREF(s->insn[k]);
    Py_XDECREF(s->mem);
    Py_XDECREF(s->read32);
    Py_XDECREF(s->read_entry);
    Py_XDECREF(s->sizes);
    Py_XDECREF(s->on_done);
    Py_XDECREF(s->passes_key);
    Py_XDECREF(s->clear_insns);
    free(s->reads.at);
    free(s->reads.gpa);
    free(s->reads.value);
    free(s->reads.method);
    free(s->reads.arg);
    free(s->clear);
    free(s->cr3s);
    free(s->vaddrs);
    free(s->access);
    if (s->cpu_procs)
        for (int c = 0; c < s->cpus; c++)
            free(s->cpu_procs[c]);
    free(s->cpu_procs);
    free(s->ncpu_procs);
    free(s->turn);
    free(s->ran);
    free(s->loaded);
    free(s->carry);
    if (s->lists)
        for (int c = 0; c < s->cpus; c++)
            free(s->lists[c].v);
    free(s->lists);
    free(s->due_done);
    free(s->others);
    free(s->ptes);
    free(s->shared_from);
    free(s->k_vaddrs);
    free(s->k_ptes);
    free(s->k_slots);
    free(s->k_clear_at);
    guest_free(s->guest);
    free(s->out.v);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

/* ------------------------------------------------------------------- reading the spec dict */

static int spec_int(PyObject *spec, const char *key, int *out) {
    long long v;
    if (spec_ll(spec, key, &v) < 0)
        return -1;
    *out = (int)v;
    return 0;
}

static int spec_double(PyObject *spec, const char *key, double *out) {
    PyObject *v = spec_item(spec, key);
    if (!v)
        return -1;
    *out = PyFloat_AsDouble(v);
    return PyErr_Occurred() ? -1 : 0;
}

/* a list of ints -> a malloc'd long long array of its length */
static long long *ll_list(PyObject *seq, Py_ssize_t *n) {
    PyObject *fast = PySequence_Fast(seq, "ScanStream: expected a sequence");
    if (!fast)
        return NULL;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    long long *out = malloc((len ? len : 1) * sizeof(long long));
    if (!out) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < len; i++)
        out[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, i));
    Py_DECREF(fast);
    if (PyErr_Occurred()) {
        free(out);
        return NULL;
    }
    *n = len;
    return out;
}

static long long *spec_lls(PyObject *spec, const char *key, Py_ssize_t want) {
    PyObject *v = spec_item(spec, key);
    Py_ssize_t n = 0;
    long long *out = v ? ll_list(v, &n) : NULL;
    if (out && n != want) {
        free(out);
        PyErr_Format(PyExc_ValueError, "ScanStream spec %s: %zd items, not %zd", key, n, want);
        return NULL;
    }
    return out;
}

static PyObject *insn_object(ScanStream *s, PyObject *name) {
    for (int k = 0; k < N_INSN; k++)
        if (PyUnicode_Compare(s->insn[k], name) == 0)
            return s->insn[k];
    if (PyErr_Occurred())
        return NULL;
    if (PyList_Append(s->clear_insns, name) < 0)
        return NULL;
    return name; /* the list keeps it */
}

static int read_clear(ScanStream *s, PyObject *ops) {
    PyObject *fast = PySequence_Fast(ops, "ScanStream: clear must be a sequence of operations");
    if (!fast)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    s->clear = malloc((n ? n : 1) * sizeof(GOp));
    s->nclear = n;
    if (!s->clear) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *op = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyTuple_Check(op) || PyTuple_GET_SIZE(op) != 6) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_TypeError, "ScanStream: a clear operation is not a 6-tuple");
            return -1;
        }
        GOp *o = &s->clear[i];
        o->kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(op, 0));
        o->cpu = (int)PyLong_AsLong(PyTuple_GET_ITEM(op, 1));
        o->addr = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(op, 2));
        o->arg = PyLong_AsLongLong(PyTuple_GET_ITEM(op, 3));
        o->value = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(op, 4));
        o->insn = PyErr_Occurred() ? NULL : insn_object(s, PyTuple_GET_ITEM(op, 5));
        if (!o->insn) {
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    return 0;
}

static int read_runner(ScanStream *s, PyObject *spec) {
    PyObject *cr3s = spec_item(spec, "cr3s"), *vaddrs = spec_item(spec, "vaddrs");
    PyObject *streams = spec_item(spec, "streams"), *cpu_procs = spec_item(spec, "cpu_procs");
    if (!cr3s || !vaddrs || !streams || !cpu_procs)
        return -1;
    Py_ssize_t n = 0;
    long long *c3 = ll_list(cr3s, &n);
    if (!c3)
        return -1;
    s->nprocs = (int)n;
    s->cr3s = (u64 *)c3;
    if (PyList_Size(vaddrs) != n || PyList_Size(streams) != n ||
        PyList_Size(cpu_procs) != s->cpus) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "ScanStream: runner lists of unequal lengths");
        return -1;
    }
    s->vaddrs = calloc(n ? n : 1, sizeof(Buf));
    s->access = calloc(n ? n : 1, sizeof(Access));
    if (!s->vaddrs || !s->access) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t q = 0; q < n; q++) {
        if (buf_get(&s->vaddrs[q], PyList_GET_ITEM(vaddrs, q), 4, "vaddrs") < 0)
            return -1;
        PyObject *st = PyList_GET_ITEM(streams, q);
        Access *a = &s->access[q];
        if (spec_int(st, "kind", &a->kind) < 0 || spec_ll(st, "pages", &a->pages) < 0 ||
            spec_ll(st, "pos", &a->pos) < 0 || spec_double(st, "write_fraction", &a->wf) < 0)
            return -1;
        PyObject *state = spec_item(st, "state");
        if (!state || mt_set(&a->mt, state) < 0)
            return -1;
        if (a->kind == P_ZIPF) {
            if (spec_ll(st, "stride", &a->stride) < 0 || spec_ll(st, "shift", &a->shift) < 0 ||
                buf_get(&a->cdf, spec_item(st, "cdf"), 8, "cdf") < 0)
                return -1;
            if (BUF_LEN(a->cdf) < 1) {
                PyErr_SetString(PyExc_ValueError, "ScanStream: empty zipf cdf");
                return -1;
            }
        } else if (a->kind == P_LACKEY) {
            PyObject *addrs = spec_item(st, "addrs"), *writes = spec_item(st, "writes");
            if (!addrs || !writes || buf_get(&a->addrs, addrs, 8, "trace addresses") < 0 ||
                buf_get(&a->writes, writes, 1, "trace writes") < 0)
                return -1;
            if (BUF_LEN(a->addrs) < 1 || BUF_LEN(a->writes) != BUF_LEN(a->addrs) ||
                a->pages < 1) {
                PyErr_SetString(PyExc_ValueError, "ScanStream: bad lackey trace");
                return -1;
            }
        } else if (a->kind != P_UNIFORM && a->kind != P_SEQUENTIAL) {
            PyErr_SetString(PyExc_ValueError, "ScanStream: unknown access pattern");
            return -1;
        }
    }
    int cpus = s->cpus;
    s->cpu_procs = calloc(cpus, sizeof(int *));
    s->ncpu_procs = calloc(cpus, sizeof(int));
    s->lists = calloc(cpus, sizeof(OpVec));
    s->due_done = calloc(cpus, sizeof(Py_ssize_t));
    s->others = calloc(cpus, sizeof(int));
    if (!s->cpu_procs || !s->ncpu_procs || !s->lists || !s->due_done || !s->others) {
        PyErr_NoMemory();
        return -1;
    }
    for (int c = 0; c < cpus; c++) {
        Py_ssize_t m = 0;
        long long *procs = ll_list(PyList_GET_ITEM(cpu_procs, c), &m);
        if (!procs)
            return -1;
        s->cpu_procs[c] = malloc((m ? m : 1) * sizeof(int));
        if (!s->cpu_procs[c]) {
            free(procs);
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t k = 0; k < m; k++) {
            if (procs[k] < 0 || procs[k] >= n) {
                free(procs);
                PyErr_SetString(PyExc_ValueError, "ScanStream: a CPU runs an unknown process");
                return -1;
            }
            s->cpu_procs[c][k] = (int)procs[k];
        }
        s->ncpu_procs[c] = (int)m;
        free(procs);
    }
    s->turn = spec_lls(spec, "turn", cpus);
    s->ran = s->turn ? spec_lls(spec, "ran", cpus) : NULL;
    s->loaded = s->ran ? spec_lls(spec, "loaded", cpus) : NULL;
    if (!s->loaded)
        return -1;
    PyObject *carry = spec_item(spec, "carry");
    if (!carry || PyList_Size(carry) != cpus) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "ScanStream: carry per CPU");
        return -1;
    }
    s->carry = malloc(cpus * sizeof(double));
    if (!s->carry) {
        PyErr_NoMemory();
        return -1;
    }
    for (int c = 0; c < cpus; c++)
        s->carry[c] = PyFloat_AsDouble(PyList_GET_ITEM(carry, c));
    if (PyErr_Occurred())
        return -1;
    return spec_double(spec, "per_jiffy", &s->per_jiffy) < 0 ||
                   spec_ll(spec, "timeslice", &s->timeslice) < 0 ? -1 : 0;
}

static int read_zone(ScanStream *s, PyObject *spec) {
    PyObject *nxt = spec_item(spec, "nxt"), *prv = spec_item(spec, "prv");
    PyObject *pte = spec_item(spec, "pte_gpa"), *chain = spec_item(spec, "chain");
    if (!nxt || !prv || !pte || !chain || buf_get(&s->nxt_b, nxt, 4, "nxt") < 0 ||
        buf_get(&s->prv_b, prv, 4, "prv") < 0 || buf_get(&s->pte_b, pte, 8, "pte_gpa") < 0 ||
        buf_get(&s->chain_b, chain, 8, "chain") < 0)
        return -1;
    if (s->nxt_b.view.readonly || s->prv_b.view.readonly) {
        PyErr_SetString(PyExc_TypeError, "ScanStream: the list links must be writable");
        return -1;
    }
    s->nxt = s->nxt_b.view.buf;
    s->prv = s->prv_b.view.buf;
    s->pte_gpa = s->pte_b.view.buf;
    s->chain = s->chain_b.view.buf;
    PyObject *count = spec_item(spec, "count");
    if (!count || buf_get(&s->count_b, count, 8, "count") < 0)
        return -1;
    if (s->count_b.view.readonly || BUF_LEN(s->count_b) != 32) {
        PyErr_SetString(PyExc_TypeError, "ScanStream: count must be 32 writable counts");
        return -1;
    }
    s->count = s->count_b.view.buf;
    if (spec_ll(spec, "base", &s->base) < 0 || spec_int(spec, "quirk", &s->quirk) < 0 ||
        spec_ll(spec, "age_interval", &s->age_interval) < 0 ||
        spec_ll(spec, "age_next", &s->age_next) < 0 ||
        spec_ll(spec, "need_scan", &s->need_scan) < 0 ||
        spec_ll(spec, "kachunk_every", &s->kachunk_every) < 0 ||
        spec_ll(spec, "shared_pages", &s->nshared) < 0 ||
        spec_ll(spec, "mappings", &s->mappings) < 0 || spec_ll(spec, "pages", &s->pages) < 0 ||
        spec_ll(spec, "cache_pages", &s->cache_pages) < 0 ||
        spec_ll(spec, "shared_cache_pages", &s->shared_cache_pages) < 0 ||
        spec_ll(spec, "max_age", &s->max_age) < 0 ||
        spec_ll(spec, "min_interval", &s->min_interval) < 0 ||
        spec_ll(spec, "max_interval", &s->max_interval) < 0)
        return -1;
    if (s->max_age != 15 || s->base != s->pages || BUF_LEN(s->nxt_b) != s->pages + 32 ||
        BUF_LEN(s->prv_b) != s->pages + 32 || BUF_LEN(s->pte_b) != s->pages ||
        BUF_LEN(s->chain_b) != s->nshared * s->mappings) {
        PyErr_SetString(PyExc_ValueError, "ScanStream: the zone's arrays do not fit its sizes");
        return -1;
    }
    return 0;
}

static int read_linear(ScanStream *s, PyObject *spec) {
    PyObject *ptes = spec_item(spec, "ptes");
    if (!ptes)
        return -1;
    if (PyList_Size(ptes) != s->nprocs) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "ScanStream: ptes per process");
        return -1;
    }
    s->ptes = calloc(s->nprocs ? s->nprocs : 1, sizeof(Buf));
    if (!s->ptes) {
        PyErr_NoMemory();
        return -1;
    }
    s->all_ptes = 0;
    for (int q = 0; q < s->nprocs; q++) {
        if (buf_get(&s->ptes[q], PyList_GET_ITEM(ptes, q), 8, "ptes") < 0)
            return -1;
        s->all_ptes += BUF_LEN(s->ptes[q]);
    }
    s->shared_from = spec_lls(spec, "shared_from", s->nprocs);
    if (!s->shared_from)
        return -1;
    return spec_ll(spec, "first", &s->first) < 0 || spec_ll(spec, "interval", &s->interval) < 0
               ? -1 : 0;
}

/* the guest and kernel variant every generator's spec gives: its vCPUs, PAE or not, lowmem, and
 * how kmap_atomic treats its fixmap pte (workloads/_kmap.py Kernel) */
static int read_kernel(ScanStream *s, PyObject *spec) {
    return spec_int(spec, "cpus", &s->cpus) < 0 || spec_int(spec, "pae", &s->pae) < 0 ||
                   spec_ll(spec, "lowmem_pages", &s->lowmem_pages) < 0 ||
                   spec_u64(spec, "kmap_prot", &s->kmap_prot) < 0 ||
                   spec_int(spec, "skip_same", &s->skip_same) < 0 ||
                   spec_int(spec, "check_same", &s->check_same) < 0 ||
                   spec_int(spec, "map_flush", &s->map_flush) < 0 ||
                   spec_ll(spec, "kmap_gap", &s->kmap_gap) < 0
               ? -1 : 0;
}

/* KmapBench's spec (bench/core/generators.py kmap_stream) */
static int read_kmap(ScanStream *s, PyObject *spec) {
    PyObject *clear = spec_item(spec, "clear");
    if (!clear || read_kernel(s, spec) < 0 || spec_ll(spec, "tables", &s->k_tables) < 0 ||
        spec_ll(spec, "ptes_per_table", &s->k_per_table) < 0 ||
        spec_ll(spec, "iterations", &s->k_iterations) < 0 || read_clear(s, clear) < 0)
        return -1;
    if (s->cpus < 1 || s->cpus > 0xFFFF || s->k_tables < 1 || s->k_per_table < 1 ||
        s->k_iterations < 0) {
        PyErr_SetString(PyExc_ValueError, "ScanStream: bad kmap cpus, tables or iterations");
        return -1;
    }
    s->k_pages = (Py_ssize_t)(s->k_tables * s->k_per_table);
    s->k_vaddrs = spec_lls(spec, "vaddrs", s->k_pages);
    s->k_ptes = s->k_vaddrs ? spec_lls(spec, "ptes", s->k_pages) : NULL;
    s->k_slots = s->k_ptes ? spec_lls(spec, "slots", 3 * (Py_ssize_t)s->cpus) : NULL;
    long long *at = s->k_slots ? spec_lls(spec, "clear_at", (Py_ssize_t)s->cpus + 1) : NULL;
    if (!at)
        return -1;
    s->k_clear_at = malloc(((Py_ssize_t)s->cpus + 1) * sizeof(Py_ssize_t));
    if (!s->k_clear_at) {
        free(at);
        PyErr_NoMemory();
        return -1;
    }
    for (int c = 0; c <= s->cpus; c++) {
        if (at[c] < 0 || at[c] > s->nclear || (c && at[c] < at[c - 1])) {
            free(at);
            PyErr_SetString(PyExc_ValueError, "ScanStream: bad kmap clear_at");
            return -1;
        }
        s->k_clear_at[c] = (Py_ssize_t)at[c];
    }
    free(at);
    s->k_warm = s->k_pages;
    return 0;
}

static PyObject *ScanStream_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *spec, *mem, *sizes, *on_done;
    if (!PyArg_ParseTuple(args, "O!OO!O", &PyDict_Type, &spec, &mem, &PyDict_Type, &sizes,
                          &on_done))
        return NULL;
    ScanStream *s = (ScanStream *)type->tp_alloc(type, 0);
    if (!s)
        return NULL;
    for (int k = 0; k < N_INSN; k++) {
        s->insn[k] = PyUnicode_InternFromString(insn_text[k]);
        if (!s->insn[k])
            goto fail;
    }
    s->clear_insns = PyList_New(0);
    s->passes_key = PyUnicode_InternFromString("passes");
    s->mem = Py_NewRef(mem);
    s->read32 = PyUnicode_InternFromString("read32");
    s->read_entry = s->read32 ? PyUnicode_InternFromString("read_entry") : NULL;
    if (!s->clear_insns || !s->passes_key || !s->read_entry)
        goto fail;
    s->sizes = Py_NewRef(sizes);
    s->on_done = Py_NewRef(on_done);
    if (spec_int(spec, "workload", &s->workload) < 0)
        goto fail;
    if (s->workload == W_KMAP) {
        if (read_kmap(s, spec) < 0)
            goto fail;
        return (PyObject *)s;
    }
    if (s->workload == W_GUEST) {
        s->cpus = 1;
        s->guest = guest_new(spec, s->insn);
        if (!s->guest)
            goto fail;
        return (PyObject *)s;
    }
    PyObject *passes = PyDict_GetItemWithError(sizes, s->passes_key);
    if (!passes) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_KeyError, "ScanStream: sizes has no passes");
        goto fail;
    }
    s->passes = PyLong_AsLongLong(passes);
    PyObject *clear = spec_item(spec, "clear");
    if (PyErr_Occurred() || !clear || spec_ll(spec, "jiffies", &s->jiffies) < 0 ||
        read_kernel(s, spec) < 0 || spec_u64(spec, "slot_vaddr", &s->slot_vaddr) < 0 ||
        spec_u64(spec, "slot_pte_kva", &s->slot_pte_kva) < 0 ||
        spec_u64(spec, "slot_pte_gpa", &s->slot_pte_gpa) < 0 ||
        spec_ll(spec, "visit_gap", &s->visit_gap) < 0 || read_clear(s, clear) < 0)
        goto fail;
    if (s->cpus < 1 || s->cpus > 0xFFFF || (s->workload != W_KSCAND && s->workload != W_LINEAR)) {
        PyErr_SetString(PyExc_ValueError, "ScanStream: bad cpus or workload");
        goto fail;
    }
    if (read_runner(s, spec) < 0)
        goto fail;
    if ((s->workload == W_KSCAND ? read_zone(s, spec) : read_linear(s, spec)) < 0)
        goto fail;
    return (PyObject *)s;
fail:
    Py_DECREF(s);
    return NULL;
}

/* ----------------------------------------------------------------- UserRunner.jiffy(cpu) */
static int runner_jiffy(ScanStream *s, int cpu, OpVec *ops) {
    ops->n = 0;
    int np = s->ncpu_procs[cpu];
    if (!np)
        return 0;
    if (s->ran[cpu] >= s->timeslice) {
        s->ran[cpu] = 0;
        s->turn[cpu] = (s->turn[cpu] + 1) % np;
    }
    s->ran[cpu] += 1;
    int q = s->cpu_procs[cpu][s->turn[cpu]];
    u64 cr3 = s->cr3s[q];
    if ((u64)s->loaded[cpu] != cr3) {
        s->loaded[cpu] = (long long)cr3;
        if (vec_push(ops, O_CR3, cpu, cr3, 0, 0, s->insn[I_CR3]) < 0)
            return -1;
    }
    double want = s->per_jiffy + s->carry[cpu];
    long long n = (long long)want;
    s->carry[cpu] = want - (double)n;
    const uint32_t *va = s->vaddrs[q].view.buf;
    Py_ssize_t nva = BUF_LEN(s->vaddrs[q]);
    Access *a = &s->access[q];
    for (long long k = 0; k < n; k++) {
        long long idx;
        u64 off;
        int write;
        access_next(a, &idx, &off, &write);
        if (idx < 0 || idx >= nva) {
            PyErr_SetString(PyExc_IndexError, "ScanStream: a page index beyond the mappings");
            return -1;
        }
        u64 addr = (u64)va[idx] | off;
        int r = write ? vec_push(ops, O_STORE, cpu, addr, 4, (u64)q + 1, s->insn[I_MOV])
                      : vec_push(ops, O_LOAD, cpu, addr, 4, 0, s->insn[I_MOV]);
        if (r < 0)
            return -1;
    }
    return 0;
}

/* ----------------------------------------- referenced_ops (workloads/_scan.py) on one pte */
/* mem.<name>(args...) looked up on the memory at the call (docs/workloads.md, the contract) */
static int read_value(ScanStream *s, PyObject *name, PyObject *a, PyObject *b, u64 *out) {
    PyObject *args[3] = {s->mem, a, b};
    PyObject *r = a ? PyObject_VectorcallMethod(name, args, b ? 3 : 2, NULL) : NULL;
    Py_XDECREF(a);
    if (!r)
        return -1;
    *out = PyLong_AsUnsignedLongLong(r);
    Py_DECREF(r);
    return PyErr_Occurred() ? -1 : 0;
}

/* a read of guest memory: with run_tee's reader, in C and logged here as GuestMemory logs it
 * ((at, method, gpa, arg, value), bench.machine.memory.ReadLog); else through the GuestMemory's
 * own read32 / read_entry (the caller attaches the log) */
static int stream_read(ScanStream *s, int method, u64 gpa, int pae, u64 *out) {
    if (!s->reader) {
        if (method == M_READ32)
            return read_value(s, s->read32, PyLong_FromUnsignedLongLong(gpa), NULL, out);
        return read_value(s, s->read_entry, PyLong_FromUnsignedLongLong(gpa),
                          pae ? Py_True : Py_False, out);
    }
    if (s->reader(s->reader_ctx, method, gpa, pae, out) < 0)
        return -1;
    if (!s->log_reads)
        return 0;
    if (s->reads.n == s->reads.cap) {
        Py_ssize_t cap = s->reads.cap ? 2 * s->reads.cap : 1024;
        u64 *at = realloc(s->reads.at, cap * 8);
        if (at)
            s->reads.at = at;
        u64 *g = at ? realloc(s->reads.gpa, cap * 8) : NULL;
        if (g)
            s->reads.gpa = g;
        u64 *v = g ? realloc(s->reads.value, cap * 8) : NULL;
        if (v)
            s->reads.value = v;
        unsigned char *m = v ? realloc(s->reads.method, cap) : NULL;
        if (m)
            s->reads.method = m;
        unsigned char *a = m ? realloc(s->reads.arg, cap) : NULL;
        if (!a) {
            PyErr_NoMemory();
            return -1;
        }
        s->reads.arg = a;
        s->reads.cap = cap;
    }
    Py_ssize_t i = s->reads.n++;
    s->reads.at[i] = (u64)s->at;
    s->reads.method[i] = (unsigned char)method;
    s->reads.gpa[i] = gpa;
    s->reads.arg[i] = method == M_READ_ENTRY ? (unsigned char)(pae != 0) : 0;
    s->reads.value[i] = *out;
    return 0;
}

static int referenced_ops(ScanStream *s, u64 gpa, int chained, int *young) {
    OpVec *out = &s->out;
    u64 gfn = gpa >> 12, base;
    int wrote = 0;
    if ((long long)gfn < s->lowmem_pages) {
        base = PAGE_OFFSET_ + (gfn << 12);
    } else { /* Kernel.kmap_fn's kmap(gfn) */
        u64 value = (gfn << 12) | s->kmap_prot;
        int same = 0;
        if (s->check_same) {
            u64 got;
            if (stream_read(s, M_READ_ENTRY, s->slot_pte_gpa, s->pae, &got) < 0)
                return -1;
            same = got == value;
        }
        base = s->slot_vaddr;
        if (!(same && s->skip_same)) {
            wrote = 1;
            if (vec_push(out, O_COMPUTE, 0, 0, 0, (u64)s->kmap_gap, s->insn[I_COMPUTE]) < 0)
                return -1;
            if (s->pae) { /* set_pte: pte_high, then pte_low */
                if (vec_push(out, O_STORE, 0, s->slot_pte_kva + 4, 4, value >> 32,
                             s->insn[I_MOV]) < 0 ||
                    vec_push(out, O_STORE, 0, s->slot_pte_kva, 4, value & 0xFFFFFFFFULL,
                             s->insn[I_MOV]) < 0)
                    return -1;
            } else if (vec_push(out, O_STORE, 0, s->slot_pte_kva, 4, value, s->insn[I_MOV]) < 0) {
                return -1;
            }
            if (s->map_flush && !same &&
                vec_push(out, O_INVLPG, 0, s->slot_vaddr, 0, 0, s->insn[I_INVLPG]) < 0)
                return -1;
        }
    }
    if (!wrote && vec_push(out, O_COMPUTE, 0, 0, 0, (u64)s->visit_gap, s->insn[I_COMPUTE]) < 0)
        return -1;
    u64 va = base + (gpa & 0xFFF), word;
    if (stream_read(s, M_READ32, gpa, 0, &word) < 0)
        return -1;
    *young = (word & A_BIT_) != 0;
    if (chained) {
        if (vec_push(out, O_BTR, 0, va, 5, 0, s->insn[I_BTR]) < 0)
            return -1;
    } else {
        if (vec_push(out, O_LOAD, 0, va, 4, 0, s->insn[I_MOV]) < 0)
            return -1;
        if (*young && vec_push(out, O_BTR, 0, va, 5, 0, s->insn[I_BTR]) < 0)
            return -1;
    }
    if (s->nclear && (long long)gfn >= s->lowmem_pages)
        return vec_extend(out, s->clear, s->nclear);
    return 0;
}

/* -------------------------------------------------------------- kscand (workloads/kscand.py) */
#define ANON 0
#define CACHE 16

static long long count_sum(const ScanStream *s, int from, int to) {
    long long t = 0;
    for (int b = from; b < to; b++)
        t += s->count[b];
    return t;
}

/* AgingZone._splice_down */
static void splice_down(ScanStream *s, int lst) {
    int32_t *nxt = s->nxt, *prv = s->prv;
    long long base = s->base + lst;
    for (int k = 0; k < 15; k++) {
        long long src = base + k + 1, dst = base + k;
        if (nxt[src] != src) {
            int32_t first = nxt[src], last = prv[src], at = nxt[dst];
            nxt[dst] = first;
            prv[first] = (int32_t)dst;
            nxt[last] = at;
            prv[at] = last;
            nxt[src] = prv[src] = (int32_t)src;
        }
        s->count[lst + k] += s->count[lst + k + 1];
        s->count[lst + k + 1] = 0;
    }
}

/* AgingZone._kachunk */
static void kachunk(ScanStream *s, long long jiffy) {
    static const int lists[2] = {ANON, CACHE};
    for (int i = 0; i < 2; i++) {
        int lst = lists[i];
        if (!count_sum(s, lst, lst + 16))
            continue;
        splice_down(s, lst);
        s->need_scan += 1;
        if (s->need_scan > 3) {
            long long next_wakeup = jiffy + s->min_interval;
            if (next_wakeup < s->age_next)
                s->age_next = next_wakeup;
        }
    }
}

/* AgingZone._need_scan */
static int need_scan_list(const ScanStream *s, int lst) {
    return count_sum(s, lst + 7, lst + 16) < count_sum(s, lst, lst + 7);
}

/* AgingZone._estimate */
static long long estimate(const ScanStream *s, int anon, int cache) {
    long long extra = s->mappings - 1, shared_cache = s->shared_cache_pages, total = 0;
    if (anon)
        total += count_sum(s, 0, 15) + (s->nshared - shared_cache) * extra;
    if (cache && s->cache_pages) {
        int src = s->quirk ? ANON : CACHE;
        long long visits = 0;
        for (int a = 0; a < 15; a++)
            if (s->count[CACHE + a])
                visits += s->count[src + a];
        total += visits + visits * shared_cache * extra / s->cache_pages;
    }
    return total;
}

/* AgingZone.wake: 1 when a pass starts now (its state set up), else 0 */
static int kscand_wake(ScanStream *s, long long jiffy) {
    if (s->kachunk_every && jiffy % s->kachunk_every == 0)
        kachunk(s, jiffy);
    if (jiffy % s->min_interval || jiffy < s->age_next)
        return 0;
    int anon = need_scan_list(s, ANON), cache = need_scan_list(s, CACHE), scan = 0;
    if (cache && !anon && s->quirk) {
        cache = 0;
        for (int a = 0; a < 15; a++)
            if (s->count[CACHE + a] && s->count[ANON + a])
                cache = 1;
    }
    if (anon || cache) {
        scan = 1;
        s->total = estimate(s, anon, cache);
        s->nlists = 0;
        if (anon) {
            s->lists_lst[s->nlists] = ANON;
            s->lists_src[s->nlists++] = ANON;
        }
        if (cache) {
            s->lists_lst[s->nlists] = CACHE;
            s->lists_src[s->nlists++] = s->quirk ? ANON : CACHE;
        }
        s->li = 0;
        s->age = 14;
        s->bucket_open = 0;
        s->in_chain = 0;
        s->requeue = 0;
    }
    long long iv = s->age_interval;
    if (s->need_scan >= 2) {
        iv = iv / 2 > s->min_interval ? iv / 2 : s->min_interval;
    } else if (!s->need_scan) {
        iv = iv + iv / 2 < s->max_interval ? iv + iv / 2 : s->max_interval;
    }
    s->need_scan = 0;
    s->age_interval = iv;
    s->age_next = jiffy + iv;
    return scan;
}

/* the end of page_referenced on page ``page`` of bucket lst + age: list_del, then list_add at
 * the head of the bucket it moves to (AgingZone._pass) */
static void kscand_requeue(ScanStream *s) {
    int32_t *nxt = s->nxt, *prv = s->prv;
    int lst = s->lists_lst[s->li];
    long long p = s->page, b = lst + s->age;
    int32_t a = prv[p], c = nxt[p];
    nxt[a] = c;
    prv[c] = a;
    long long nb = b;
    if (s->referenced) {
        nb = lst + (s->age + 4 < 15 ? s->age + 4 : 15);
        s->count[b] -= 1;
        s->count[nb] += 1;
    }
    long long dst = s->base + nb;
    int32_t first = nxt[dst];
    nxt[p] = first;
    prv[p] = (int32_t)dst;
    prv[first] = (int32_t)p;
    nxt[dst] = (int32_t)p;
}

/* the next pte visit of the pass (AgingZone._pass) into s->out: 1, or 0 when the pass ends.
 * The page last visited moves first: the Python generator moves it when it resumes after its
 * page's last visit, so the lists are the same at every operation. */
static int kscand_visit(ScanStream *s) {
    if (s->requeue) {
        s->requeue = 0;
        kscand_requeue(s);
    }
    for (;;) {
        int young;
        if (s->in_chain) { /* a pte_chain page: one visit per mapping, in chain order */
            if (referenced_ops(s, (u64)s->chain[s->t], 1, &young) < 0)
                return -1;
            if (young)
                s->referenced = 1;
            if (++s->t == s->tend) {
                s->in_chain = 0;
                s->requeue = 1;
            }
            return 1;
        }
        if (s->li >= s->nlists)
            return 0;
        int lst = s->lists_lst[s->li];
        long long head = s->base + lst + s->age;
        if (!s->bucket_open) { /* scan_active_list(count read now) */
            s->todo = s->count[s->lists_src[s->li] + s->age];
            s->bucket_open = 1;
        }
        long long p = s->todo > 0 ? s->prv[head] : head;
        if (p == head) { /* done with this bucket: the next (age - 1), or the next list */
            s->bucket_open = 0;
            if (--s->age < 0) {
                s->age = 14;
                s->li++;
            }
            continue;
        }
        s->todo--;
        s->page = p;
        s->referenced = 0;
        if (p < s->nshared) {
            s->in_chain = 1;
            s->t = p * s->mappings;
            s->tend = s->t + s->mappings;
            continue;
        }
        if (referenced_ops(s, (u64)s->pte_gpa[p], 0, &young) < 0)
            return -1;
        s->referenced = young;
        s->requeue = 1;
        return 1;
    }
}

/* ------------------------------------------- linear-scan (workloads/linear_scan.py) */
static int linear_wake(ScanStream *s, long long jiffy) {
    if (jiffy < s->first || (jiffy - s->first) % s->interval)
        return 0;
    s->total = s->all_ptes;
    s->lq = 0;
    s->li_pte = 0;
    return 1;
}

static int linear_visit(ScanStream *s) {
    while (s->lq < s->nprocs && s->li_pte >= BUF_LEN(s->ptes[s->lq])) {
        s->lq++;
        s->li_pte = 0;
    }
    if (s->lq >= s->nprocs)
        return 0;
    Py_ssize_t i = s->li_pte++;
    int young;
    const i64 *ptes = s->ptes[s->lq].view.buf;
    return referenced_ops(s, (u64)ptes[i], i >= s->shared_from[s->lq], &young) < 0 ? -1 : 1;
}

/* -------------------------------------------------- the jiffy timeline (ScanWorkload._timeline) */
/* the other CPUs' operations due after visit ``i`` of ``total`` (all of them with ``i`` < 0) */
static int spread_others(ScanStream *s, long long i) {
    for (int k = 0; k < s->nothers; k++) {
        OpVec *lst = &s->lists[s->others[k]];
        Py_ssize_t due = lst->n;
        if (i >= 0) {
            long long total = s->total > 1 ? s->total : 1;
            long long d = i * (long long)lst->n / total;
            if (d < due)
                due = (Py_ssize_t)d;
        }
        Py_ssize_t *done = &s->due_done[k];
        if (due > *done) {
            if (vec_extend(&s->out, lst->v + *done, due - *done) < 0)
                return -1;
            *done = due;
        }
    }
    return 0;
}

/* ------------------------------------------------ the kmap microbenchmark (workloads/kmap.py) */
/* Kernel.kmap(cpu, KM_PTE2, gfn) then the pte's address (Kernel.pte_vaddr): the fixmap pte read
 * (when the variant compares it) happens here, when the previous operations have run */
static int kmap_pte_vaddr(ScanStream *s, int cpu, u64 gpa, u64 *va) {
    OpVec *out = &s->out;
    u64 gfn = gpa >> 12;
    if ((long long)gfn < s->lowmem_pages) {
        *va = PAGE_OFFSET_ + (gfn << 12) + (gpa & 0xFFF);
        return 0;
    }
    const long long *slot = &s->k_slots[3 * cpu];
    u64 vaddr = (u64)slot[0], pte_kva = (u64)slot[1], pte_gpa = (u64)slot[2];
    u64 value = (gfn << 12) | s->kmap_prot;
    int same = 0;
    *va = vaddr + (gpa & 0xFFF);
    if (s->check_same) {
        u64 got;
        if (stream_read(s, M_READ_ENTRY, pte_gpa, s->pae, &got) < 0)
            return -1;
        same = got == value;
        if (same && s->skip_same)
            return 0;
    }
    if (vec_push(out, O_COMPUTE, cpu, 0, 0, (u64)s->kmap_gap, s->insn[I_COMPUTE]) < 0)
        return -1;
    if (s->pae) { /* set_pte: pte_high, then pte_low */
        if (vec_push(out, O_STORE, cpu, pte_kva + 4, 4, value >> 32, s->insn[I_MOV]) < 0 ||
            vec_push(out, O_STORE, cpu, pte_kva, 4, value & 0xFFFFFFFFULL, s->insn[I_MOV]) < 0)
            return -1;
    } else if (vec_push(out, O_STORE, cpu, pte_kva, 4, value, s->insn[I_MOV]) < 0) {
        return -1;
    }
    if (s->map_flush && !same && vec_push(out, O_INVLPG, cpu, vaddr, 0, 0, s->insn[I_INVLPG]) < 0)
        return -1;
    return 0;
}

/* KmapBench._ops: every page touched once, the warm-up round, MARK 0, the measured iterations,
 * MARK 1; one iteration (or one mark) per refill, so a read happens where Python's happens */
static int kmap_refill(ScanStream *s) {
    OpVec *out = &s->out;
    if (s->k_phase == 0) {
        for (Py_ssize_t n = 0; n < s->k_pages; n++)
            if (vec_push(out, O_LOAD, 0, (u64)s->k_vaddrs[n], 4, 0, s->insn[I_MOV]) < 0)
                return -1;
        s->k_phase = 1;
        return 1;
    }
    if (s->k_phase == 2)
        return 0;
    long long i = s->k_i;
    if (i == s->k_warm + s->k_iterations) {
        s->k_phase = 2;
        return vec_push(out, O_MARK, 0, 0, 1, 0, s->insn[I_MARK]) < 0 ? -1 : 1;
    }
    if (i == s->k_warm && !s->k_marked) {
        s->k_marked = 1;
        return vec_push(out, O_MARK, 0, 0, 0, 0, s->insn[I_MARK]) < 0 ? -1 : 1;
    }
    long long t = i % s->k_tables, k = (i / s->k_tables) % s->k_per_table;
    Py_ssize_t n = (Py_ssize_t)(t * s->k_per_table + k);
    int cpu = (int)(i % s->cpus);
    u64 gpa = (u64)s->k_ptes[n], va;
    if (kmap_pte_vaddr(s, cpu, gpa, &va) < 0 ||
        vec_push(out, O_BTR, cpu, va, 5, 0, s->insn[I_BTR]) < 0)
        return -1;
    if ((long long)(gpa >> 12) >= s->lowmem_pages && /* kunmap_atomic of a highmem page */
        vec_extend(out, s->clear + s->k_clear_at[cpu],
                   s->k_clear_at[cpu + 1] - s->k_clear_at[cpu]) < 0)
        return -1;
    if (vec_push(out, O_LOAD, cpu, (u64)s->k_vaddrs[n], 4, 0, s->insn[I_MOV]) < 0)
        return -1;
    s->k_i = i + 1;
    return 1;
}

static int guest_read(void *ctx, int method, u64 gpa, int pae, u64 *value) {
    return stream_read((ScanStream *)ctx, method, gpa, pae, value);
}

/* fill s->out with the next operations; 0 when the stream has ended */
static int refill(ScanStream *s) {
    if (s->workload == W_KMAP)
        return kmap_refill(s);
    if (s->workload == W_GUEST)
        return guest_refill(s->guest, &s->out, guest_read, s);
    while (s->out.n == 0) {
        if (s->in_pass) {
            int r = s->workload == W_KSCAND ? kscand_visit(s) : linear_visit(s);
            if (r < 0)
                return -1;
            if (r) {
                if (spread_others(s, ++s->visit_i) < 0)
                    return -1;
                continue;
            }
            if (spread_others(s, -1) < 0)
                return -1;
            s->in_pass = 0;
            s->passes++;
            PyObject *v = PyLong_FromLongLong(s->passes);
            if (!v || PyDict_SetItem(s->sizes, s->passes_key, v) < 0) {
                Py_XDECREF(v);
                return -1;
            }
            Py_DECREF(v);
            if (vec_push(&s->out, O_MARK, 0, 0, s->passes, 0, s->insn[I_MARK]) < 0)
                return -1;
            continue;
        }
        if (s->jiffy >= s->jiffies)
            return 0;
        long long jiffy = ++s->jiffy;
        int scan = s->workload == W_KSCAND ? kscand_wake(s, jiffy) : linear_wake(s, jiffy);
        if (!scan) {
            Py_ssize_t longest = 0;
            for (int c = 0; c < s->cpus; c++) {
                if (runner_jiffy(s, c, &s->lists[c]) < 0)
                    return -1;
                if (s->lists[c].n > longest)
                    longest = s->lists[c].n;
            }
            for (Py_ssize_t i = 0; i < longest; i++) /* _interleave: CPU 0 first */
                for (int c = 0; c < s->cpus; c++)
                    if (i < s->lists[c].n && vec_extend(&s->out, &s->lists[c].v[i], 1) < 0)
                        return -1;
            continue;
        }
        s->nothers = 0;
        for (int c = 1; c < s->cpus; c++) {
            if (runner_jiffy(s, c, &s->lists[c]) < 0)
                return -1;
            if (s->lists[c].n) {
                s->due_done[s->nothers] = 0;
                s->others[s->nothers++] = c;
            }
        }
        s->in_pass = 1;
        s->visit_i = 0;
    }
    return 1;
}

static PyObject *ll_pylist(const long long *v, int n) {
    PyObject *out = PyList_New(n);
    for (int i = 0; out && i < n; i++) {
        PyObject *x = PyLong_FromLongLong(v[i]);
        if (!x) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, x);
    }
    return out;
}

/* the final state, handed to on_done (bench/core/generators.py writes it back) */
static PyObject *final_state(ScanStream *s) {
    PyObject *carry = PyList_New(s->cpus), *states = PyList_New(s->nprocs);
    PyObject *pos = PyList_New(s->nprocs);
    if (!carry || !states || !pos)
        goto fail;
    for (int c = 0; c < s->cpus; c++) {
        PyObject *x = PyFloat_FromDouble(s->carry[c]);
        if (!x)
            goto fail;
        PyList_SET_ITEM(carry, c, x);
    }
    for (int q = 0; q < s->nprocs; q++) {
        PyObject *st = mt_get(&s->access[q].mt), *p = PyLong_FromLongLong(s->access[q].pos);
        if (!st || !p) {
            Py_XDECREF(st);
            Py_XDECREF(p);
            goto fail;
        }
        PyList_SET_ITEM(states, q, st);
        PyList_SET_ITEM(pos, q, p);
    }
    return Py_BuildValue("{sNsNsNsNsNsNsLsLsL}", "turn", ll_pylist(s->turn, s->cpus),
                         "ran", ll_pylist(s->ran, s->cpus), "loaded",
                         ll_pylist(s->loaded, s->cpus), "carry", carry, "rng", states, "pos",
                         pos, "age_interval", s->age_interval, "age_next", s->age_next,
                         "need_scan", s->need_scan);
fail:
    Py_XDECREF(carry);
    Py_XDECREF(states);
    Py_XDECREF(pos);
    return NULL;
}

/* the next operation: 1 (*op set), 0 at the end (on_done called), -1 on an error */
static int advance(ScanStream *s, const GOp **op) {
    if (s->done)
        return 0;
    if (s->head == s->out.n) {
        s->out.n = s->head = 0;
        int r = refill(s);
        if (r <= 0) {
            s->done = 1;
            if (r < 0)
                return -1;
            if (s->on_done == Py_None) { /* nothing to write back (kmap) */
                stream_release(s);
                return 0;
            }
            PyObject *state = s->guest ? guest_final_state(s->guest) : final_state(s);
            stream_release(s);
            PyObject *res = state ? PyObject_CallOneArg(s->on_done, state) : NULL;
            Py_XDECREF(state);
            if (!res)
                return -1;
            Py_DECREF(res);
            return 0;
        }
    }
    *op = &s->out.v[s->head++];
    return 1;
}

extern PyTypeObject ScanStreamType;

int scan_stream_check(PyObject *o) {
    return Py_IS_TYPE(o, &ScanStreamType);
}

/* a reader of guest memory in C (NULL: back to the GuestMemory's methods), its reads logged
 * (run_tee) or not (Core.run_stream: a policy's guest generating its own stream) */
void scan_stream_attach(PyObject *o, scan_read_fn reader, void *ctx, int log_reads) {
    ScanStream *s = (ScanStream *)o;
    s->reader = reader;
    s->reader_ctx = ctx;
    s->log_reads = log_reads;
}

/* whether an operation's instruction name (from scan_stream_pull) is ``btr`` */
int scan_stream_is_btr(PyObject *o, PyObject *insn) {
    return insn == ((ScanStream *)o)->insn[I_BTR];
}

/* the reads logged since the last call, as the recording's read columns (at, method, gpa, arg,
 * value; bench.recording.READ_FIELDS), or None when there are none; the log is emptied */
PyObject *scan_stream_take_reads(PyObject *o, PyObject *array_type, Py_ssize_t *n) {
    ScanStream *s = (ScanStream *)o;
    *n = s->reads.n;
    if (!s->reads.n)
        Py_RETURN_NONE;
    const char *codes[5] = {"Q", "B", "Q", "B", "Q"};
    void *cols[5] = {s->reads.at, s->reads.method, s->reads.gpa, s->reads.arg, s->reads.value};
    const Py_ssize_t sizes[5] = {8, 1, 8, 1, 8};
    PyObject *out = PyTuple_New(5);
    for (int i = 0; out && i < 5; i++) {
        PyObject *raw = PyBytes_FromStringAndSize(cols[i], s->reads.n * sizes[i]);
        PyObject *a = raw ? PyObject_CallFunction(array_type, "sO", codes[i], raw) : NULL;
        Py_XDECREF(raw);
        if (!a) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, i, a);
    }
    s->reads.n = 0;
    return out;
}

/* the next operation's fields for run_tee (bench/core/_core.c), ``at`` the operations executed
 * before it: 1, 0 at the end, -1 on an error (*insn borrowed: the stream keeps it alive) */
int scan_stream_pull(PyObject *o, long long at, int *kind, int *cpu, u64 *addr, i64 *arg,
                     u64 *value, PyObject **insn) {
    ScanStream *s = (ScanStream *)o;
    const GOp *op;
    s->at = at;
    int r = advance(s, &op);
    if (r <= 0)
        return r;
    *kind = op->kind;
    *cpu = op->cpu;
    *addr = op->addr;
    *arg = op->arg;
    *value = op->value;
    *insn = op->insn;
    return 1;
}

static PyObject *ScanStream_next(ScanStream *s) {
    const GOp *o;
    if (advance(s, &o) <= 0)
        return NULL; /* StopIteration, or the error */
    PyObject *t = PyTuple_New(6);
    if (!t)
        return NULL;
    PyObject *items[5] = {PyLong_FromLong(o->kind), PyLong_FromLong(o->cpu),
                          PyLong_FromUnsignedLongLong(o->addr), PyLong_FromLongLong(o->arg),
                          PyLong_FromUnsignedLongLong(o->value)};
    for (int i = 0; i < 5; i++) {
        if (!items[i]) {
            for (int j = 0; j < 5; j++)
                Py_XDECREF(items[j]);
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, items[i]);
    }
    PyTuple_SET_ITEM(t, 5, Py_NewRef(o->insn));
    return t;
}

PyTypeObject ScanStreamType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bench.core._core.ScanStream",
    .tp_basicsize = sizeof(ScanStream),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ScanStream(spec, mem, sizes, on_done): a workload's operations generated in C "
              "(bench/core/generators.py)",
    .tp_new = ScanStream_new,
    .tp_dealloc = (destructor)ScanStream_dealloc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)ScanStream_next,
};
