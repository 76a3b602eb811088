/* The guest workload's replay of a recorded real guest in C (issue 17): bench/record/replay.py
 * Replayer.ops, event for event, reading the recording's decompressed body directly (no Event
 * object, no operation tuple).
 *
 * The Python Replayer stays the readable reference: every rule (the cr3 load held until the
 * tables it links are filled, the walks of one instruction flushed before the next event and
 * dropped when a store of that instruction hits their page, a COMPUTE gap for skipped
 * instruction counts, the stores' instruction classes, btr on the accessed bit, a table's
 * contents rewritten through the direct map or the last kmap_local slot seen) is documented
 * there and in docs/real-guests.md, and implemented here in the same order. The body comes in
 * pieces from Recording.body (bench/record/format.py), which decompresses it, digests it and,
 * once it is exhausted, checks it whole against its header through the EventStream it is
 * given: this file decodes the events in its place and keeps that EventStream's count, buf and
 * offset current before asking for the next piece, so the same checks run on the same values;
 * a malformed event raises the RecordingError EventStream would, with the same message.
 *
 * Guest memory is read where the Python generator reads it, after the same operations have
 * run (a TABLE event's reads wait until the walks queued before it have been handed out), so a
 * recording's read log is the same. The Replayer's vbase and level dicts are updated in place;
 * its cr3, kmap slot and stats are written back when the replay ends (guest_final_state).
 * bench/core/generators.py guest_stream builds the spec; tests/test_native_generators.py
 * requires identical operations, reads, memory and final state. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_stream.h"

/* bench/record/format.py: event kinds, flags, the 48-byte event */
enum { E_TABLE, E_UNTABLE, E_STORE, E_CR3, E_INVLPG, E_WALK, E_MARK, N_KINDS };
#define EVENT_SIZE 48
#define F_WRITE 2
#define P_ 0x1ULL
#define US_ 0x4ULL
#define PS_ 0x80ULL
#define N_CLASSES 16 /* instruction classes: fmt.INSN_NAMES's codes, then OTHER */
#define OTHER (N_CLASSES - 1) /* a code past fmt.INSN_NAMES: "other" (Replayer._store_op) */

/* Replayer.stats keys, in this order */
enum { S_PREFIX, S_WALKS_OF_A_STORE, S_BTR_NOT_ACCESSED, S_WORDS, S_DIRECT, S_KMAP, N_STATS };
static const char *stat_names[N_STATS] = {"prefix_events", "walks_of_a_store",
                                          "btr_not_accessed", "table_words_rewritten",
                                          "tables_rewritten_direct", "tables_rewritten_kmap"};

typedef struct {
    int kind, arg, insn, flags;
    u64 aux, icount, pa, va, value;
    const unsigned char *payload;
    Py_ssize_t size; /* bytes of the event with its payload */
} Event;

typedef struct {
    long long icount;
    u64 va;
    int write;
} Walk;

struct GuestReplay {
    PyObject *chunks; /* iterator of the body's decompressed pieces (Recording.body) */
    PyObject *events; /* the EventStream Recording.body checks at the end */
    PyObject *path, *error, *bench_error, *vbase, *level;
    PyObject *insn[N_INSN];        /* borrowed from the stream */
    PyObject *class_name[N_CLASSES];
    int class_insn[N_CLASSES];     /* the op's instruction (I_*), or -1: "mov", counted */
    int btr_code, nnames;
    /* the body */
    unsigned char *buf;
    Py_ssize_t len, pos, cap;
    long long offset; /* body offset of buf[0] */
    long long count;  /* events decoded */
    int exhausted;
    /* Replayer.ops */
    int pae;
    u64 kmap_prot, direct_end;
    long long skip, limit, n, last_icount;
    u64 cr3, held_cr3;
    int held, phase, finished, tail_done, resume;
    Walk *pending;
    Py_ssize_t npending, cap_pending;
    int kmap_seen;
    u64 kmap_pte_va, kmap_pte_pa, kmap_slot;
    u64 *writes; /* a table's differing words: (gpa, value) pairs */
    long long stats[N_STATS], as_mov[N_CLASSES];
    unsigned char touched[N_STATS], touched_mov[N_CLASSES];
};

static void count(GuestReplay *g, int key, long long n) {
    g->stats[key] += n;
    g->touched[key] = 1;
}

void guest_free(GuestReplay *g) {
    if (!g)
        return;
    Py_XDECREF(g->chunks);
    Py_XDECREF(g->events);
    Py_XDECREF(g->path);
    Py_XDECREF(g->error);
    Py_XDECREF(g->bench_error);
    Py_XDECREF(g->vbase);
    Py_XDECREF(g->level);
    for (int c = 0; c < N_CLASSES; c++)
        Py_XDECREF(g->class_name[c]);
    free(g->buf);
    free(g->pending);
    free(g->writes);
    free(g);
}

/* the instruction classes: fmt.INSN_NAMES (codes past its end are "other", code 0's name) */
static int read_classes(GuestReplay *g, PyObject *spec, PyObject *const insn[N_INSN]) {
    PyObject *names = spec_item(spec, "insn_names"), *classes = spec_item(spec, "store_classes");
    if (!names || !classes || !PyTuple_Check(names) || PyTuple_GET_SIZE(names) < 1 ||
        PyTuple_GET_SIZE(names) > N_CLASSES - 1) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "guest replay spec: insn_names");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    g->btr_code = -1;
    g->nnames = (int)n;
    for (int c = 0; c < N_CLASSES; c++) {
        if (c >= n && c != OTHER)
            continue;
        PyObject *name = c == OTHER ? PyUnicode_InternFromString("other")
                                    : Py_NewRef(PyTuple_GET_ITEM(names, c));
        if (!name)
            return -1;
        g->class_name[c] = name;
        g->class_insn[c] = -1;
        int member = PySequence_Contains(classes, name);
        if (member < 0)
            return -1;
        if (PyUnicode_CompareWithASCIIString(name, "btr") == 0 && c != OTHER)
            g->btr_code = c;
        if (!member)
            continue;
        for (int k = 0; k < N_INSN; k++)
            if (PyUnicode_Compare(insn[k], name) == 0)
                g->class_insn[c] = k;
        if (g->class_insn[c] < 0) {
            PyErr_Format(PyExc_ValueError, "guest replay: store class %R has no stream name",
                         name);
            return -1;
        }
    }
    return 0;
}

GuestReplay *guest_new(PyObject *spec, PyObject *const insn[N_INSN]) {
    GuestReplay *g = calloc(1, sizeof(GuestReplay));
    if (!g) {
        PyErr_NoMemory();
        return NULL;
    }
    PyObject *chunks = spec_item(spec, "chunks");
    g->chunks = chunks ? PyObject_GetIter(chunks) : NULL;
    const char *keys[6] = {"events", "path", "error", "bench_error", "vbase", "level"};
    PyObject **slots[6] = {&g->events, &g->path, &g->error, &g->bench_error, &g->vbase,
                           &g->level};
    for (int k = 0; g->chunks && k < 6; k++) {
        PyObject *v = spec_item(spec, keys[k]);
        if (!v)
            goto fail;
        *slots[k] = Py_NewRef(v);
    }
    if (!g->chunks || !PyDict_Check(g->vbase) || !PyDict_Check(g->level) ||
        !PyUnicode_Check(g->path)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "guest replay spec: vbase, level, path");
        goto fail;
    }
    for (int k = 0; k < N_INSN; k++)
        g->insn[k] = insn[k];
    long long pae, cr3, kmap_seen;
    if (spec_ll(spec, "pae", &pae) < 0 || spec_ll(spec, "skip", &g->skip) < 0 ||
        spec_ll(spec, "limit", &g->limit) < 0 || spec_ll(spec, "cr3", &cr3) < 0 ||
        spec_u64(spec, "kmap_prot", &g->kmap_prot) < 0 ||
        spec_u64(spec, "direct_end", &g->direct_end) < 0 ||
        spec_ll(spec, "kmap_seen", &kmap_seen) < 0 ||
        spec_u64(spec, "kmap_pte_va", &g->kmap_pte_va) < 0 ||
        spec_u64(spec, "kmap_pte_pa", &g->kmap_pte_pa) < 0 ||
        spec_u64(spec, "kmap_slot", &g->kmap_slot) < 0 || read_classes(g, spec, insn) < 0)
        goto fail;
    g->pae = pae != 0;
    g->cr3 = (u64)cr3;
    g->kmap_seen = kmap_seen != 0;
    g->last_icount = -1;
    g->writes = malloc(2 * 1024 * sizeof(u64));
    if (!g->writes) {
        PyErr_NoMemory();
        goto fail;
    }
    return g;
fail:
    guest_free(g);
    return NULL;
}

/* ------------------------------------------------------------------------------ the body */
/* keep the EventStream as EventStream.feed would leave it here: the events decoded, the bytes
 * not yet decoded and their body offset (Recording.body's final checks read them) */
static int sync_events(GuestReplay *g) {
    PyObject *n = PyLong_FromLongLong(g->count);
    PyObject *rest = n ? PyBytes_FromStringAndSize((const char *)g->buf + g->pos,
                                                   g->len - g->pos) : NULL;
    PyObject *at = rest ? PyLong_FromLongLong(g->offset + g->pos) : NULL;
    int r = at && PyObject_SetAttrString(g->events, "count", n) == 0 &&
            PyObject_SetAttrString(g->events, "buf", rest) == 0 &&
            PyObject_SetAttrString(g->events, "offset", at) == 0 ? 0 : -1;
    Py_XDECREF(n);
    Py_XDECREF(rest);
    Py_XDECREF(at);
    return r;
}

/* the next piece of the body appended to the bytes not yet decoded: 1, 0 at its end, -1 */
static int pull(GuestReplay *g) {
    if (g->exhausted)
        return 0;
    if (sync_events(g) < 0)
        return -1;
    PyObject *piece = PyIter_Next(g->chunks);
    if (!piece) {
        if (PyErr_Occurred())
            return -1;
        g->exhausted = 1;
        return 0;
    }
    char *data;
    Py_ssize_t size;
    if (PyBytes_AsStringAndSize(piece, &data, &size) < 0) {
        Py_DECREF(piece);
        return -1;
    }
    Py_ssize_t keep = g->len - g->pos;
    if (g->pos) {
        memmove(g->buf, g->buf + g->pos, keep);
        g->offset += g->pos;
        g->pos = 0;
        g->len = keep;
    }
    if (keep + size > g->cap) {
        Py_ssize_t cap = g->cap ? g->cap : 1 << 16;
        while (cap < keep + size)
            cap *= 2;
        unsigned char *buf = realloc(g->buf, cap);
        if (!buf) {
            Py_DECREF(piece);
            PyErr_NoMemory();
            return -1;
        }
        g->buf = buf;
        g->cap = cap;
    }
    memcpy(g->buf + g->len, data, size);
    g->len += size;
    Py_DECREF(piece);
    return 1;
}

static u64 le(const unsigned char *p, int bytes) {
    u64 v = 0;
    for (int i = bytes - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* the event at the current position (EventStream.feed's checks): 1, 0 at the end, -1 */
static int peek(GuestReplay *g, Event *e) {
    for (;;) {
        Py_ssize_t have = g->len - g->pos;
        if (have >= EVENT_SIZE) {
            const unsigned char *p = g->buf + g->pos;
            long long at = g->offset + g->pos;
            e->kind = p[0];
            if (e->kind >= N_KINDS) {
                PyErr_Format(g->error, "%U: unknown event kind %d at event-stream byte offset "
                             "%lld", g->path, e->kind, at);
                return -1;
            }
            e->arg = p[1];
            e->insn = p[2];
            e->flags = p[3];
            e->aux = le(p + 4, 4);
            e->icount = le(p + 8, 8);
            e->pa = le(p + 24, 8);
            e->va = le(p + 32, 8);
            e->value = le(p + 40, 8);
            e->size = EVENT_SIZE;
            e->payload = NULL;
            if (e->kind == E_TABLE) {
                if (e->aux != 32 && e->aux != 4096) {
                    PyErr_Format(g->error, "%U: table event with a %llu-byte payload at "
                                 "event-stream byte offset %lld (valid: 32, 4096)", g->path,
                                 (unsigned long long)e->aux, at);
                    return -1;
                }
                if (have >= EVENT_SIZE + (Py_ssize_t)e->aux) {
                    e->payload = p + EVENT_SIZE;
                    e->size += (Py_ssize_t)e->aux;
                    return 1;
                }
            } else {
                if (e->kind == E_STORE && e->arg != 1 && e->arg != 2 && e->arg != 4 &&
                    e->arg != 8) {
                    PyErr_Format(g->error, "%U: store of width %d at event-stream byte offset "
                                 "%lld (valid: 1, 2, 4, 8)", g->path, e->arg, at);
                    return -1;
                }
                return 1;
            }
        }
        int r = pull(g);
        if (r <= 0)
            return r;
    }
}

static void consume(GuestReplay *g, const Event *e) {
    g->pos += e->size;
    g->count++;
}

/* ------------------------------------------------------------------------ Replayer.ops */
static int op(OpVec *out, GuestReplay *g, int kind, u64 addr, i64 arg, u64 value, int insn) {
    return vec_push(out, kind, 0, addr, arg, value, g->insn[insn]);
}

/* Replayer._walk_ops */
static int walk_op(OpVec *out, GuestReplay *g, const Walk *w) {
    return op(out, g, w->write ? O_STORE : O_LOAD, w->va, 1, 0, I_MOV);
}

static int flush_walks(OpVec *out, GuestReplay *g) {
    for (Py_ssize_t i = 0; i < g->npending; i++)
        if (walk_op(out, g, &g->pending[i]) < 0)
            return -1;
    g->npending = 0;
    return 0;
}

/* Replayer._store_op */
static int store_op(OpVec *out, GuestReplay *g, const Event *e) {
    int code = e->insn < g->nnames ? e->insn : OTHER;
    if (code == g->btr_code && e->arg == 4 && !(e->va & 3)) {
        int bit = 5;
        if (e->value & 0x20) { /* _lowest_clear */
            bit = 0;
            for (int b = 0; b < 32; b++)
                if (!(e->value >> b & 1)) {
                    bit = b;
                    break;
                }
        }
        if (bit != 5)
            count(g, S_BTR_NOT_ACCESSED, 1);
        return op(out, g, O_BTR, e->va, bit, 0, I_BTR);
    }
    int insn = g->class_insn[code];
    if (insn < 0) {
        g->as_mov[code]++;
        g->touched_mov[code] = 1;
        insn = I_MOV;
    }
    return op(out, g, O_STORE, e->va, e->arg, e->value, insn);
}

static int dict_get_u64(PyObject *d, u64 key, int *found, u64 *value) {
    PyObject *k = PyLong_FromUnsignedLongLong(key);
    if (!k)
        return -1;
    PyObject *v = PyDict_GetItemWithError(d, k);
    Py_DECREF(k);
    *found = v != NULL;
    if (!v)
        return PyErr_Occurred() ? -1 : 0;
    *value = PyLong_AsUnsignedLongLong(v);
    return PyErr_Occurred() ? -1 : 0;
}

static int dict_set_u64(PyObject *d, u64 key, u64 value) {
    PyObject *k = PyLong_FromUnsignedLongLong(key), *v = PyLong_FromUnsignedLongLong(value);
    int r = k && v ? PyDict_SetItem(d, k, v) : -1;
    Py_XDECREF(k);
    Py_XDECREF(v);
    return r;
}

/* Replayer._note_kmap */
static int note_kmap(GuestReplay *g, const Event *e) {
    int found;
    u64 base;
    if (dict_get_u64(g->vbase, e->pa >> 12, &found, &base) < 0)
        return -1;
    if (!found)
        return 0;
    u64 esize = g->pae ? 8 : 4;
    u64 mapped = base + ((e->pa & 0xFFF) / esize) * 4096;
    if (mapped >= g->direct_end) {
        g->kmap_seen = 1;
        g->kmap_pte_va = e->va - (e->pa & (esize - 1));
        g->kmap_pte_pa = e->pa - (e->pa & (esize - 1));
        g->kmap_slot = mapped;
    }
    return 0;
}

/* Replayer._translate: 1 with *gpa, 0 when not mapped, -1 */
static int translate(GuestReplay *g, stream_read_fn read, void *ctx, u64 cr3, u64 va, int user,
                     u64 *gpa) {
    u64 pde_gpa, mask, entry;
    int pte_shift, large;
    if (g->pae) {
        if (read(ctx, M_READ_ENTRY, (cr3 & 0xFFFFFFE0ULL) + ((va >> 30) << 3), 1, &entry) < 0)
            return -1;
        if (!(entry & P_))
            return 0;
        pde_gpa = (entry & 0x000FFFFFFFFFF000ULL) + (((va >> 21) & 0x1FF) << 3);
        mask = 0x000FFFFFFFFFF000ULL;
        pte_shift = 9;
        large = 21;
    } else {
        pde_gpa = (cr3 & 0xFFFFF000ULL) + ((va >> 22) << 2);
        mask = 0xFFFFF000ULL;
        pte_shift = 10;
        large = 22;
    }
    u64 pde;
    if (read(ctx, M_READ_ENTRY, pde_gpa, g->pae, &pde) < 0)
        return -1;
    if (!(pde & P_) || (user && !(pde & US_)))
        return 0;
    if (pde & PS_) {
        u64 low = (1ULL << large) - 1;
        *gpa = (pde & mask & ~low) + (va & low);
        return 1;
    }
    u64 esize = g->pae ? 8 : 4, pte;
    if (read(ctx, M_READ_ENTRY, (pde & mask) + ((va >> 12) & ((1ULL << pte_shift) - 1)) * esize,
             g->pae, &pte) < 0)
        return -1;
    if (!(pte & P_) || (user && !(pte & US_)))
        return 0;
    *gpa = (pte & mask) + (va & 0xFFF);
    return 1;
}

/* Replayer._table_ops: the stores that make the frame hold the recorded contents */
static int table_ops(OpVec *out, GuestReplay *g, const Event *e, stream_read_fn read,
                     void *ctx) {
    Py_ssize_t nw = 0, words = (Py_ssize_t)e->aux / 4;
    for (Py_ssize_t i = 0; i < words; i++) {
        u64 want = le(e->payload + 4 * i, 4), have;
        if (read(ctx, M_READ32, e->pa + 4 * (u64)i, 0, &have) < 0)
            return -1;
        if (have != want) {
            g->writes[2 * nw] = e->pa + 4 * (u64)i;
            g->writes[2 * nw + 1] = want;
            nw++;
        }
    }
    if (!nw)
        return 0;
    count(g, S_WORDS, nw);
    u64 direct = PAGE_OFFSET_ + e->pa, got;
    if (direct < g->direct_end) {
        int r = translate(g, read, ctx, g->cr3, direct, 0, &got);
        if (r < 0)
            return -1;
        if (r && got == e->pa) {
            count(g, S_DIRECT, 1);
            for (Py_ssize_t i = 0; i < nw; i++)
                if (op(out, g, O_STORE, PAGE_OFFSET_ + g->writes[2 * i], 4, g->writes[2 * i + 1],
                       I_MOV) < 0)
                    return -1;
            return 0;
        }
    }
    if (!g->kmap_seen) {
        char pa[32];
        snprintf(pa, sizeof pa, "0x%llx", (unsigned long long)e->pa);
        PyErr_Format(g->bench_error, "%U: table %s needs writing before any kmap_local slot was "
                     "seen; cannot replay it", g->path, pa);
        return -1;
    }
    u64 pte_va = g->kmap_pte_va, old;
    if (read(ctx, M_READ_ENTRY, g->kmap_pte_pa, g->pae, &old) < 0)
        return -1;
    u64 new = (e->pa & ~0xFFFULL) | g->kmap_prot;
    if (g->pae) {
        if (op(out, g, O_STORE, pte_va + 4, 4, new >> 32, I_MOV) < 0 ||
            op(out, g, O_STORE, pte_va, 4, new & 0xFFFFFFFFULL, I_MOV) < 0)
            return -1;
    } else if (op(out, g, O_STORE, pte_va, 4, new, I_MOV) < 0) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < nw; i++)
        if (op(out, g, O_STORE, g->kmap_slot + (g->writes[2 * i] & 0xFFF), 4,
               g->writes[2 * i + 1], I_MOV) < 0)
            return -1;
    if (g->pae) {
        if (op(out, g, O_STORE, pte_va, 4, old & 0xFFFFFFFFULL, I_MOV) < 0 ||
            op(out, g, O_STORE, pte_va + 4, 4, old >> 32, I_MOV) < 0)
            return -1;
    } else if (op(out, g, O_STORE, pte_va, 4, old, I_MOV) < 0) {
        return -1;
    }
    if (op(out, g, O_INVLPG, g->kmap_slot, 0, 0, I_INVLPG) < 0)
        return -1;
    count(g, S_KMAP, 1);
    return 0;
}

/* what comes before an event's own operations (the top of Replayer.ops' loop body) */
static int before_event(OpVec *out, GuestReplay *g, const Event *e) {
    if (g->held && e->kind != E_TABLE) {
        g->cr3 = g->held_cr3;
        g->held = 0;
        if (op(out, g, O_CR3, g->held_cr3, 0, 0, I_CR3) < 0)
            return -1;
    }
    if (g->npending && ((long long)e->icount != g->pending[0].icount || e->kind != E_WALK)) {
        if (e->kind == E_STORE && (long long)e->icount == g->pending[0].icount) {
            Py_ssize_t kept = 0;
            for (Py_ssize_t i = 0; i < g->npending; i++)
                if (g->pending[i].va >> 12 != e->va >> 12)
                    g->pending[kept++] = g->pending[i];
            count(g, S_WALKS_OF_A_STORE, g->npending - kept);
            g->npending = kept;
        }
        if (flush_walks(out, g) < 0)
            return -1;
    }
    if (e->kind != E_TABLE && e->kind != E_UNTABLE && e->icount) {
        long long ic = (long long)e->icount;
        if (g->last_icount >= 0 && ic - g->last_icount > 1 &&
            op(out, g, O_COMPUTE, 0, 0, (u64)(ic - g->last_icount - 1), I_COMPUTE) < 0)
            return -1;
        if (g->last_icount < ic)
            g->last_icount = ic;
    }
    return 0;
}

/* an event's own operations (the kinds of Replayer.ops' loop body) */
static int the_event(OpVec *out, GuestReplay *g, const Event *e, stream_read_fn read,
                     void *ctx) {
    switch (e->kind) {
    case E_STORE:
        if (store_op(out, g, e) < 0)
            return -1;
        return e->aux == 1 ? note_kmap(g, e) : 0;
    case E_WALK:
        if (g->npending == g->cap_pending) {
            Py_ssize_t cap = g->cap_pending ? 2 * g->cap_pending : 16;
            Walk *w = realloc(g->pending, cap * sizeof(Walk));
            if (!w) {
                PyErr_NoMemory();
                return -1;
            }
            g->pending = w;
            g->cap_pending = cap;
        }
        g->pending[g->npending++] = (Walk){(long long)e->icount, e->va, (e->flags & F_WRITE) != 0};
        return 0;
    case E_CR3:
        g->held_cr3 = e->value;
        g->held = 1;
        return 0;
    case E_INVLPG:
        return op(out, g, O_INVLPG, e->va, 0, 0, I_INVLPG);
    case E_TABLE:
        if (dict_set_u64(g->vbase, e->pa >> 12, e->va) < 0 ||
            dict_set_u64(g->level, e->pa >> 12, (u64)e->arg) < 0)
            return -1;
        return table_ops(out, g, e, read, ctx);
    case E_MARK:
        if (g->phase && op(out, g, O_MARK, 0, g->phase, 0, I_MARK) < 0)
            return -1;
        g->phase = (int)e->aux;
        if (!g->phase)
            g->finished = 1;
        return 0;
    default: /* E_UNTABLE */
        return 0;
    }
}

/* after Replayer.ops' loop: the held cr3 load (handed out; the Replayer's cr3 stays the one
 * before it, as Replayer.ops leaves it), the last walks, the phase a prefix ends in */
static int tail(OpVec *out, GuestReplay *g) {
    g->tail_done = 1;
    if (g->held) {
        g->held = 0;
        if (op(out, g, O_CR3, g->held_cr3, 0, 0, I_CR3) < 0)
            return -1;
    }
    if (flush_walks(out, g) < 0)
        return -1;
    return g->phase && op(out, g, O_MARK, 0, g->phase, 0, I_MARK) < 0 ? -1 : 0;
}

int guest_refill(GuestReplay *g, OpVec *out, stream_read_fn read, void *ctx) {
    while (out->n == 0) {
        if (g->finished) {
            if (g->tail_done)
                return 0;
            if (tail(out, g) < 0)
                return -1;
            continue;
        }
        Event e;
        int r = peek(g, &e);
        if (r < 0)
            return -1;
        if (r == 0) { /* the body has ended (and passed Recording.body's checks) */
            g->finished = 1;
            continue;
        }
        if (g->skip > 0) { /* the snapshot, which the Replayer loaded */
            g->skip--;
            consume(g, &e);
            continue;
        }
        if (!g->resume) {
            if (g->limit && g->n >= g->limit) {
                count(g, S_PREFIX, g->n);
                g->finished = 1;
                continue;
            }
            g->n++;
            if (before_event(out, g, &e) < 0)
                return -1;
            if (e.kind == E_TABLE && out->n) { /* its reads come after these operations */
                g->resume = 1;
                return 1;
            }
        }
        g->resume = 0;
        if (the_event(out, g, &e, read, ctx) < 0)
            return -1;
        consume(g, &e);
    }
    return 1;
}

PyObject *guest_final_state(GuestReplay *g) {
    PyObject *stats = PyDict_New();
    for (int k = 0; stats && k < N_STATS; k++) {
        if (!g->touched[k])
            continue;
        PyObject *v = PyLong_FromLongLong(g->stats[k]);
        if (!v || PyDict_SetItemString(stats, stat_names[k], v) < 0)
            Py_CLEAR(stats);
        Py_XDECREF(v);
    }
    for (int c = 0; stats && c < N_CLASSES; c++) {
        if (!g->touched_mov[c])
            continue;
        /* code 0 is named "other" too: one key for both */
        PyObject *key = PyUnicode_FromFormat("store_%U_as_mov", g->class_name[c]);
        PyObject *was = key ? PyDict_GetItemWithError(stats, key) : NULL;
        long long before = was ? PyLong_AsLongLong(was) : 0;
        PyObject *v = key && !PyErr_Occurred() ? PyLong_FromLongLong(before + g->as_mov[c])
                                               : NULL;
        if (!v || PyDict_SetItem(stats, key, v) < 0)
            Py_CLEAR(stats);
        Py_XDECREF(key);
        Py_XDECREF(v);
    }
    if (!stats)
        return NULL;
    PyObject *kmap = g->kmap_seen ? Py_BuildValue("(KKK)", (unsigned long long)g->kmap_pte_va,
                                                  (unsigned long long)g->kmap_pte_pa,
                                                  (unsigned long long)g->kmap_slot)
                                  : Py_NewRef(Py_None);
    if (!kmap) {
        Py_DECREF(stats);
        return NULL;
    }
    return Py_BuildValue("{sKsNsN}", "cr3", (unsigned long long)g->cr3, "kmap", kmap, "stats",
                         stats);
}
