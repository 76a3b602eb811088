/* The native simulation core: KVM's shadow MMU and the built-in unshadow policies in C.
 *
 * This is the same model as the readable Python reference (bench/machine/memory.py, paging.py,
 * native.py, shadow.py and the policies/ modules); every function below names the Python function it
 * mirrors, and the rule's source (the kernel or Xen code) is documented there, not repeated here.
 * The differential test (tests/test_native_core.py) runs every built-in policy on every workload
 * in both and requires identical counters, marks and guest memory.
 *
 * Data structures (issue 17): guest memory as 1024-word page arrays in an open-addressing table
 * keyed by gfn plus an open-addressing table of sparse words; shadow pages as structs in one pool
 * (never reused within a run, so a policy's spte reference stays unambiguous), a level-1 page's
 * 512 sptes a u64 array (0: no spte), a level-2 page's 512 children an int32 array (-1: none);
 * the rmap and the per-gfn lists of shadow pages as small vectors in open-addressing tables;
 * counters in a u64 array in bench.machine.counters.ALL_COUNTERS order.
 *
 * Entry point: Core(tables, words, pae, cr3s, config, policy) then feed_reads()/run_ops()
 * (bench/core/__init__.py drives them over a bench.recording.OpRecording's packed columns).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t u64;
typedef int64_t i64;
typedef uint32_t u32;

/* ------------------------------------------------------------------ constants (bench.ops etc.) */
enum { K_STORE = 0, K_BTR = 1, K_BTS = 2, K_LOAD = 3, K_INVLPG = 4, K_CR3 = 5, K_COMPUTE = 6,
       K_MARK = 7 };
#define PAGE_OFFSET 0xC0000000ULL
#define P_BIT 0x001ULL
#define RW_BIT 0x002ULL
#define US_BIT 0x004ULL
#define A_BIT 0x020ULL
#define D_BIT 0x040ULL
#define PS_BIT 0x080ULL
#define ADDR_MASK_32 0xFFFFF000ULL
#define ADDR_MASK_PAE 0x000FFFFFFFFFF000ULL
#define SPTE_P 0x1ULL
#define SPTE_W 0x2ULL
#define SPTE_A 0x20ULL

/* bench/core/_scan.c: the scan workloads' generators, and the direct path run_tee takes */
extern PyTypeObject ScanStreamType;
typedef int (*scan_read_fn)(void *ctx, int method, u64 gpa, int pae, u64 *value);
int scan_stream_check(PyObject *o);
void scan_stream_attach(PyObject *o, scan_read_fn reader, void *ctx, int log_reads);
int scan_stream_is_btr(PyObject *o, PyObject *insn);
PyObject *scan_stream_take_reads(PyObject *o, PyObject *array_type, Py_ssize_t *n);
int scan_stream_pull(PyObject *o, long long at, int *kind, int *cpu, u64 *addr, i64 *arg,
                     u64 *value, PyObject **insn);

enum { FIXED = 0, PTWRITE = 1, GUEST_FAULT = 2 };
enum { D_EMULATE = 0, D_UNSHADOW = 1, D_UNSHADOW_NATIVE = 2, D_UNSYNC = 3 };

/* bench.machine.counters.ALL_COUNTERS, in order (checked against it at import) */
enum {
    C_exits, C_pf_fixed, C_pf_guest, C_invlpg, C_tlb_flush, C_insn_emulation,
    C_insn_emulation_extra, C_mmu_pte_write, C_mmu_pte_updated, C_mmu_pde_zapped, C_mmu_flooded,
    C_mmu_shadow_zapped, C_mmu_cache_miss, C_mmu_unsync,
    C_exit_ptwrite_emulate, C_exit_ptwrite_unshadow, C_exit_ptwrite_unsync, C_exit_hidden_fault,
    C_exit_guest_fault, C_exit_invlpg, C_exit_cr3,
    C_insn_emulation_extra_non_pt, C_pf_bypassed, C_mmu_resync, C_mmu_resync_gpte,
    C_tdp_tlb_miss, C_tdp_walk_refs, C_native_walk_refs,
    C_native_load, C_native_store, C_native_locked_rmw, C_native_invlpg, C_native_cr3,
    C_native_page_fault, C_native_compute_cycles,
    NCOUNTERS
};
static const char *counter_names[NCOUNTERS] = {
    "exits", "pf_fixed", "pf_guest", "invlpg", "tlb_flush", "insn_emulation",
    "insn_emulation_extra", "mmu_pte_write", "mmu_pte_updated", "mmu_pde_zapped", "mmu_flooded",
    "mmu_shadow_zapped", "mmu_cache_miss", "mmu_unsync",
    "exit_ptwrite_emulate", "exit_ptwrite_unshadow", "exit_ptwrite_unsync", "exit_hidden_fault",
    "exit_guest_fault", "exit_invlpg", "exit_cr3",
    "insn_emulation_extra_non_pt", "pf_bypassed", "mmu_resync", "mmu_resync_gpte",
    "tdp_tlb_miss", "tdp_walk_refs", "native_walk_refs",
    "native_load", "native_store", "native_locked_rmw", "native_invlpg", "native_cr3",
    "native_page_fault", "native_compute_cycles",
};

/* ------------------------------------------------------------------ open-addressing u64 -> u64 */
/* Keys are never deleted: a value of 0 means "absent" (callers store value + 1 where 0 is a
 * valid value), so a key once inserted keeps its slot and probing stays simple. */
typedef struct {
    u64 *keys;
    u64 *vals;
    size_t cap; /* a power of two, or 0 */
    size_t used;
} map_t;

static int map_grow(map_t *m);

static inline size_t map_hash(u64 key, size_t cap) {
    return (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 17) & (cap - 1);
}

/* the slot of key, or of the empty slot where it would go; cap must be > 0 */
static inline size_t map_slot(const map_t *m, u64 key) {
    size_t i = map_hash(key, m->cap);
    for (;;) {
        if (m->keys[i] == key + 1 || m->keys[i] == 0)
            return i;
        i = (i + 1) & (m->cap - 1);
    }
}

static inline u64 map_get(const map_t *m, u64 key) {
    if (!m->cap)
        return 0;
    size_t i = map_slot(m, key);
    return m->keys[i] ? m->vals[i] : 0;
}

/* a pointer to key's value, inserting it (value 0) if needed; NULL when out of memory */
static u64 *map_ref(map_t *m, u64 key) {
    if (!m->cap || (m->used + 1) * 4 > m->cap * 3) {
        if (map_grow(m) < 0)
            return NULL;
    }
    size_t i = map_slot(m, key);
    if (!m->keys[i]) {
        m->keys[i] = key + 1; /* stored + 1: key 0 is valid, slot 0 means empty */
        m->vals[i] = 0;
        m->used++;
    }
    return &m->vals[i];
}

static int map_grow(map_t *m) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    u64 *keys = calloc(cap, sizeof(u64)), *vals = calloc(cap, sizeof(u64));
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return -1;
    }
    map_t n = {keys, vals, cap, 0};
    for (size_t i = 0; i < m->cap; i++) {
        if (m->keys[i]) {
            size_t j = map_slot(&n, m->keys[i] - 1);
            n.keys[j] = m->keys[i];
            n.vals[j] = m->vals[i];
            n.used++;
        }
    }
    free(m->keys);
    free(m->vals);
    *m = n;
    return 0;
}

static void map_free(map_t *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof(*m));
}

/* ------------------------------------------------------------------ small vectors of u64 */
typedef struct {
    u64 *v;
    u32 n, cap;
} vec_t;

static int vec_push(vec_t *a, u64 x) {
    if (a->n == a->cap) {
        u32 cap = a->cap ? a->cap * 2 : 4;
        u64 *v = realloc(a->v, cap * sizeof(u64));
        if (!v)
            return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

static int vec_find(const vec_t *a, u64 x) {
    for (u32 i = 0; i < a->n; i++)
        if (a->v[i] == x)
            return (int)i;
    return -1;
}

/* remove the element at i keeping the order (the per-gfn page lists are ordered) */
static void vec_remove_at(vec_t *a, u32 i) {
    memmove(a->v + i, a->v + i + 1, (a->n - i - 1) * sizeof(u64));
    a->n--;
}

/* a table of vectors: key -> index + 1 into a pool of vec_t */
typedef struct {
    map_t index;
    vec_t *pool;
    size_t n, cap;
} vecmap_t;

/* the vector of key, created empty if needed (NULL when out of memory) */
static vec_t *vecmap_ref(vecmap_t *vm, u64 key) {
    u64 *slot = map_ref(&vm->index, key);
    if (!slot)
        return NULL;
    if (!*slot) {
        if (vm->n == vm->cap) {
            size_t cap = vm->cap ? vm->cap * 2 : 64;
            vec_t *pool = realloc(vm->pool, cap * sizeof(vec_t));
            if (!pool)
                return NULL;
            vm->pool = pool;
            vm->cap = cap;
        }
        memset(&vm->pool[vm->n], 0, sizeof(vec_t));
        *slot = ++vm->n;
    }
    return &vm->pool[*slot - 1];
}

static inline vec_t *vecmap_get(const vecmap_t *vm, u64 key) {
    u64 i = map_get(&vm->index, key);
    return i ? &vm->pool[i - 1] : NULL;
}

static void vecmap_free(vecmap_t *vm) {
    for (size_t i = 0; i < vm->n; i++)
        free(vm->pool[i].v);
    free(vm->pool);
    map_free(&vm->index);
    memset(vm, 0, sizeof(*vm));
}

/* ------------------------------------------------------------------ guest memory (memory.py) */
typedef struct {
    map_t tables; /* gfn -> (u32 *) page of 1024 words */
    map_t words;  /* word address (gpa >> 2) -> value + 1 (sparse words; 0 absent) */
} mem_t;

static inline u32 *mem_table(const mem_t *m, u64 gfn) {
    return (u32 *)(uintptr_t)map_get(&m->tables, gfn);
}

/* GuestMemory._word */
static inline u32 mem_word(const mem_t *m, u64 gpa) {
    u32 *page = mem_table(m, gpa >> 12);
    if (page)
        return page[(gpa & 0xFFF) >> 2];
    u64 v = map_get(&m->words, gpa >> 2);
    return v ? (u32)(v - 1) : 0;
}

/* GuestMemory.write32 (a zero word is kept as a zero: it reads and compares as absent) */
static inline int mem_write32(mem_t *m, u64 gpa, u32 value) {
    u32 *page = mem_table(m, gpa >> 12);
    if (page) {
        page[(gpa & 0xFFF) >> 2] = value;
        return 0;
    }
    if (!value) {
        if (m->words.cap) {
            size_t i = map_slot(&m->words, gpa >> 2);
            if (m->words.keys[i])
                m->words.vals[i] = 1;
        }
        return 0;
    }
    u64 *slot = map_ref(&m->words, gpa >> 2);
    if (!slot)
        return -1;
    *slot = (u64)value + 1;
    return 0;
}

/* GuestMemory.read_entry */
static inline u64 mem_entry(const mem_t *m, u64 gpa, int pae) {
    u32 *page = mem_table(m, gpa >> 12);
    if (page) {
        size_t i = (gpa & 0xFFF) >> 2;
        return pae ? (u64)page[i] | ((u64)page[i + 1] << 32) : page[i];
    }
    if (pae)
        return (u64)mem_word(m, gpa) | ((u64)mem_word(m, gpa + 4) << 32);
    return mem_word(m, gpa);
}

/* GuestMemory.read */
static u64 mem_read(const mem_t *m, u64 gpa, int width) {
    if (width == 4 && !(gpa & 3))
        return mem_word(m, gpa);
    u64 value = 0;
    for (int i = 0; i < width; i++) {
        u64 a = gpa + i;
        value |= (u64)((mem_word(m, a & ~3ULL) >> (8 * (a & 3))) & 0xFF) << (8 * i);
    }
    return value;
}

static void mem_free(mem_t *m) {
    for (size_t i = 0; i < m->tables.cap; i++)
        if (m->tables.keys[i])
            free((void *)(uintptr_t)m->tables.vals[i]);
    map_free(&m->tables);
    map_free(&m->words);
}

/* ------------------------------------------------------------------ guest walk (paging.py) */
typedef struct {
    u64 gfn;
    i64 pt_gfn; /* -1: a PS=1 directory entry maps the page */
    u64 pd_gfn, leaf_gpa, leaf;
    int writable, user, dirty, dirtied;
} walk_t;

/* ------------------------------------------------------------------ shadow pages (shadow.py) */
typedef struct {
    u64 gfn;
    int level, quadrant, direct;
    u64 *sptes;      /* level 1: 512 sptes (0: none); NULL: none at all */
    int32_t *children; /* level 2: 512 child ids (-1: none) */
    vec_t parents;   /* (parent id << 9) | index */
    int unsync, root_count, zapped, prefetched;
    i64 write_flooding_count;
    u64 notrap[8], trap[8];
    int nsptes;
} sp_t;

static inline u64 sp_key(u64 gfn, int level, int quadrant, int direct) {
    return (gfn << 5) | ((u64)level << 3) | ((u64)quadrant << 1) | (u64)direct;
}

static inline int bit_get(const u64 *bits, int i) { return (int)((bits[i >> 6] >> (i & 63)) & 1); }
static inline void bit_set(u64 *bits, int i) { bits[i >> 6] |= 1ULL << (i & 63); }
static inline void bit_clear(u64 *bits, int i) { bits[i >> 6] &= ~(1ULL << (i & 63)); }

/* ------------------------------------------------------------------ the policies (policies/) */
enum { B_EMULATE, B_UNSHADOW, B_FLOOD, B_PERPAGE, B_XEN_EARLY, B_UNSYNC, B_XEN_OOS, B_SKI,
       B_ORACLE, B_TDP };

typedef struct {
    int base;
    /* wrappers: accessed-clear (policies/accessed_clear.py), xen-batch (policies/xen_batch.py) */
    int accessed_clear;
    int batch, batch_extra, batch_pae_only;
    /* flood-count / unsync (policies/flood_count.py) */
    int v20, v27;
    i64 threshold;
    /* per-page-flood */
    int include_leaf;
    /* xen-early-unshadow / xen-oos */
    int keep_on_unaligned_zero;
    int oos_limit;
    /* ski-rental: thresholds drawn ahead (ski-rental-random) or one fixed value */
    PyObject *draw; /* callable returning a list of thresholds, or NULL (fixed) */
    i64 ski_threshold;
    i64 *drawn;
    Py_ssize_t ndrawn, next_drawn;
    /* oracle */
    int oracle_native;
} policy_t;

/* per-vCPU and per-gfn policy state */
typedef struct {
    /* flood-count */
    u64 last_gfn;
    i64 count;
    i64 last_pte;     /* spte ref (sp id << 9 | idx), -1: NULL */
    int has_pte_gfn;
    i64 last_pte_gfn;
    /* xen-early-unshadow: last_emulated_mfn_for_unshadow, -1: none */
    i64 xen_last;
    /* xen-oos table (oos_limit slots, -1: empty) */
    i64 *oos;
} cpu_state_t;

/* ------------------------------------------------------------------ the machine */
typedef struct {
    PyObject_HEAD
    mem_t mem;
    int pae, esize, cpus;
    /* MMUConfig */
    int update_spte, dirty_bit_pte_write, quadrant_filter, user_fault_unshadow,
        user_write_unshadow, bypass, intercept_invlpg, invlpg_drops_spte, sync_on_cr3,
        sync_zaps_empty;
    u64 counters[NCOUNTERS];
    PyObject *marks; /* list of (arg, tuple of counter values) */
    sp_t *sps;
    size_t nsp, capsp;
    map_t pages;     /* sp_key -> id + 1 */
    vecmap_t by_gfn; /* gfn -> ids of its indirect shadow pages, in creation order */
    vecmap_t rmap;   /* gfn -> refs of the leaf sptes mapping it */
    vec_t unsync_pages;
    u64 *cr3;
    int32_t *roots; /* cpus x 4 */
    i64 *batch;
    int *reload;
    int unsynced;
    walk_t last_walk;
    policy_t pol;
    cpu_state_t *cs;
    /* ski-rental per gfn: writes + 1, threshold, speculative refs */
    map_t ski_writes, ski_threshold;
    vecmap_t ski_spec;
    i64 ski_written_gfn;
    /* oracle per gfn: plan (writes << 1 | unshadow), next index, count */
    vecmap_t oracle_plan;
    map_t oracle_next, oracle_count;
    i64 oracle_zap_gfn;
    /* tdp (bench/machine/tdp.py): per vCPU ``tlb_entries`` TLB slots, LRU by use stamp */
    struct tlb_slot {
        u64 vpn, gfn, stamp;
        int valid, writable, user, dirty, glob;
    } *tlb;
    i64 tlb_entries;
    u64 tlb_clock;
    /* the insn table: flags per insn id (bit 0: "btr") */
    unsigned char *insn_btr;
    Py_ssize_t ninsn;
    /* replay state */
    Py_buffer rb[5];
    int have_reads;
    Py_ssize_t rj, rn;
    i64 done;     /* operations executed */
    Py_ssize_t op_pos; /* position in the current op chunk */
    int failed;   /* a C-level error (out of memory, BenchError) is pending */
} Core;

static PyObject *BenchError; /* bench.errors.BenchError */

#define OOM(self) do { (self)->failed = 1; PyErr_NoMemory(); } while (0)

/* ------------------------------------------------------------------ walk (paging.walk) */
/* Guest memory as the walk and the writes see it: the native core's own (mem_t) or, for the
 * shared native execution, the Python GuestMemory (Native below). Both executors call the
 * generic functions with constant accessors, which the compiler inlines. */
typedef u32 (*word_fn)(void *mem, u64 gpa);
typedef int (*write32_fn)(void *mem, u64 gpa, u32 value); /* -1: out of memory / an error */

static inline u64 entry_of(void *mem, word_fn word, u64 gpa, int pae) {
    return pae ? (u64)word(mem, gpa) | ((u64)word(mem, gpa + 4) << 32) : word(mem, gpa);
}

/* paging.walk with set_bits: 1 a translation in *w, 0 a guest page fault, -1 an error */
static inline int walk_generic(void *mem, word_fn word, write32_fn write32, int pae, u64 cr3,
                               u64 vaddr, int write, int user, walk_t *w) {
    u64 pde_gpa;
    if (pae) {
        u64 pdpte = entry_of(mem, word, (cr3 & 0xFFFFFFE0ULL) + ((vaddr >> 30) << 3), 1);
        if (!(pdpte & P_BIT))
            return 0;
        pde_gpa = (pdpte & ADDR_MASK_PAE) + (((vaddr >> 21) & 0x1FF) << 3);
    } else {
        pde_gpa = (cr3 & ADDR_MASK_32) + ((vaddr >> 22) << 2);
    }
    u64 pde = entry_of(mem, word, pde_gpa, pae);
    if (!(pde & P_BIT) || (user && !(pde & US_BIT)))
        return 0;
    u64 mask = pae ? ADDR_MASK_PAE : ADDR_MASK_32;
    if (pde & PS_BIT) {
        if (write && !(pde & RW_BIT))
            return 0;
        int dirtied = write && !(pde & D_BIT);
        u64 want = pde | A_BIT | (write ? D_BIT : 0);
        if (want != pde) {
            if (write32(mem, pde_gpa, (u32)want) < 0)
                return -1;
            pde = want;
        }
        u64 span = (1ULL << ((pae ? 21 : 22) - 12)) - 1;
        w->gfn = (((pde & mask) >> 12) & ~span) + ((vaddr >> 12) & span);
        w->pt_gfn = -1;
        w->pd_gfn = pde_gpa >> 12;
        w->leaf_gpa = pde_gpa;
        w->leaf = pde;
        w->writable = (pde & RW_BIT) != 0;
        w->user = (pde & US_BIT) != 0;
        w->dirty = (pde & D_BIT) != 0;
        w->dirtied = dirtied;
        return 1;
    }
    u64 pte_gpa = (pde & mask) + (((vaddr >> 12) & (pae ? 511 : 1023)) * (pae ? 8 : 4));
    u64 pte = entry_of(mem, word, pte_gpa, pae);
    if (!(pte & P_BIT) || (user && !(pte & US_BIT)))
        return 0;
    int writable = (pde & RW_BIT) && (pte & RW_BIT);
    if (write && !writable)
        return 0;
    int dirtied = write && !(pte & D_BIT);
    if (!(pde & A_BIT)) {
        if (write32(mem, pde_gpa, (u32)(pde | A_BIT)) < 0)
            return -1;
    }
    u64 want = pte | A_BIT | (write ? D_BIT : 0);
    if (want != pte) {
        if (write32(mem, pte_gpa, (u32)want) < 0)
            return -1;
        pte = want;
    }
    w->gfn = (pte & mask) >> 12;
    w->pt_gfn = (i64)((pde & mask) >> 12);
    w->pd_gfn = pde_gpa >> 12;
    w->leaf_gpa = pte_gpa;
    w->leaf = pte;
    w->writable = writable;
    w->user = (pde & US_BIT) && (pte & US_BIT);
    w->dirty = (pte & D_BIT) != 0;
    w->dirtied = dirtied;
    return 1;
}

/* native.apply_write (GuestMemory.write for widths other than an aligned word); -1 an error */
static inline int apply_write_generic(void *mem, word_fn word, write32_fn write32, u64 gpa,
                                      int kind, i64 width, u64 value) {
    if (kind == K_STORE) {
        if (width == 4 && !(gpa & 3))
            return write32(mem, gpa, (u32)value);
        for (i64 i = 0; i < width; i++) {
            u64 a = gpa + i, at = a & ~3ULL;
            int shift = 8 * (a & 3);
            u32 old = word(mem, at);
            u32 byte = (u32)((value >> (8 * i)) & 0xFF);
            if (write32(mem, at, (old & ~(0xFFu << shift)) | (byte << shift)) < 0)
                return -1;
        }
        return 0;
    }
    u64 at = gpa & ~3ULL;
    u32 old = word(mem, at);
    u32 bit = 1u << (width & 31);
    return write32(mem, at, kind == K_BTR ? (old & ~bit) : (old | bit));
}

/* native.count_native */
static inline void count_native_in(u64 *c, int kind, i64 arg) {
    switch (kind) {
    case K_LOAD: c[C_native_load]++; break;
    case K_STORE: c[C_native_store]++; break;
    case K_BTR: case K_BTS: c[C_native_locked_rmw]++; break;
    case K_INVLPG: c[C_native_invlpg]++; break;
    case K_CR3: c[C_native_cr3]++; break;
    case K_COMPUTE: c[C_native_compute_cycles] += (u64)arg; break;
    }
}

static u32 mem_word_fn(void *m, u64 gpa) { return mem_word(m, gpa); }
static int mem_write32_fn(void *m, u64 gpa, u32 v) { return mem_write32(m, gpa, v); }

static int walk(Core *self, u64 cr3, u64 vaddr, int write, int user, walk_t *w) {
    return walk_generic(&self->mem, mem_word_fn, mem_write32_fn, self->pae, cr3, vaddr, write,
                        user, w);
}

static int apply_write(Core *self, u64 gpa, int kind, i64 width, u64 value) {
    return apply_write_generic(&self->mem, mem_word_fn, mem_write32_fn, gpa, kind, width, value);
}

static inline void count_native(Core *self, int kind, i64 arg) {
    count_native_in(self->counters, kind, arg);
}

/* ------------------------------------------------------------------ forward declarations */
static void zap_page(Core *self, int32_t id);
static void sync_page(Core *self, int32_t id);
static int set_spte(Core *self, int cpu, int32_t id, int idx, u64 gfn, int writable, int dirty,
                    int write_fault, int user_fault, int speculative);
static void write_fault(Core *self, int kind, int cpu, u64 vaddr, i64 arg, u64 value, int insn,
                        int retry);
static void emulate_write(Core *self, int cpu, u64 gpa, int kind, i64 arg, u64 value, int insn,
                          int extra);
static void load_roots(Core *self, int cpu);

/* the write a policy sees (bench.machine.events.PteWrite) */
typedef struct {
    int cpu;
    u64 gpa, gfn, offset;
    i64 bytes;
    int pte_size, is_btr;
    u64 old_gpte, new_gpte;
    int extra, walker;
} ptewrite_t;

static inline int pw_misaligned(const ptewrite_t *w) {
    return ((w->offset ^ (w->offset + (u64)w->bytes - 1)) & ~(u64)(w->pte_size - 1)) != 0;
}

/* ------------------------------------------------------------------ MMUView (for policies) */
static inline u64 ref_spte(Core *self, i64 ref) {
    sp_t *sp = &self->sps[ref >> 9];
    return sp->sptes ? sp->sptes[ref & 511] : 0;
}

/* ShadowMachine.resync_gfn */
static void resync_gfn(Core *self, u64 gfn) {
    vec_t *sps = vecmap_get(&self->by_gfn, gfn);
    if (!sps || !sps->n)
        return;
    u32 n = sps->n;
    u64 ids[n];
    memcpy(ids, sps->v, n * sizeof(u64));
    for (u32 i = 0; i < n && !self->failed; i++)
        if (self->sps[ids[i]].unsync)
            sync_page(self, (int32_t)ids[i]);
}

/* ------------------------------------------------------------------ policy hooks */
static cpu_state_t *cpu_state(Core *self, int cpu) { return &self->cs[cpu]; }

static int pol_flood(const policy_t *p) { return p->base == B_FLOOD || p->base == B_UNSYNC; }
static int pol_xen(const policy_t *p) { return p->base == B_XEN_EARLY || p->base == B_XEN_OOS; }

/* Policy.on_pte_write */
static int pol_on_pte_write(Core *self, const ptewrite_t *w) {
    policy_t *p = &self->pol;
    cpu_state_t *s = cpu_state(self, w->cpu);
    if (pol_flood(p)) { /* FloodCount.on_pte_write */
        i64 last_pte = s->last_pte;
        if (p->v27 && last_pte >= 0 && s->has_pte_gfn && (u64)s->last_pte_gfn == w->gfn) {
            u64 *sptes = self->sps[last_pte >> 9].sptes; /* mark_spte_accessed */
            if (sptes && sptes[last_pte & 511])
                sptes[last_pte & 511] |= SPTE_A;
        }
        int accessed = last_pte >= 0 && (ref_spte(self, last_pte) & SPTE_A);
        int flooded = 0;
        if (w->gfn == s->last_gfn && !accessed) {
            s->count += 1;
            flooded = s->count >= p->threshold;
        } else {
            s->last_gfn = w->gfn;
            s->count = 1;
            s->last_pte = -1;
        }
        return flooded || (!p->v20 && w->bytes < 4);
    }
    if (pol_xen(p)) { /* XenEarlyUnshadow.on_pte_write */
        if (w->walker)
            return 0;
        int readable = 0;
        u64 word = 0;
        if (w->bytes >= 4) { /* first_written_word */
            u64 shift = w->offset & (u64)(w->pte_size - 1);
            if (shift + 4 <= (u64)w->pte_size) {
                readable = 1;
                word = (w->new_gpte >> (8 * shift)) & 0xFFFFFFFFULL;
            }
        }
        if (readable && word == 0) {
            if (w->offset % (u64)w->pte_size == 0) {
                int hit = s->xen_last == (i64)w->gfn;
                s->xen_last = (i64)w->gfn;
                return hit;
            }
            if (p->keep_on_unaligned_zero)
                return 0;
        }
        s->xen_last = -1;
        return 0;
    }
    if (p->base == B_SKI) {
        self->ski_written_gfn = (i64)w->gfn;
        return 0;
    }
    if (p->base == B_ORACLE) {
        if ((i64)w->gfn == self->oracle_zap_gfn && !w->walker) {
            self->oracle_zap_gfn = -1;
            return 1;
        }
        return 0;
    }
    return 0;
}

/* PerPageFlood.on_pte_write_page */
static int pol_on_pte_write_page(Core *self, const ptewrite_t *w, sp_t *sp) {
    policy_t *p = &self->pol;
    if (w->walker)
        return 0;
    if (!(w->bytes == 1 && w->offset % (u64)w->pte_size == 0)) {
        if (pw_misaligned(w) || w->bytes < 4)
            return 1;
    }
    if (sp->level == 1 && !p->include_leaf)
        return 0;
    sp->write_flooding_count += 1;
    return sp->write_flooding_count >= p->threshold;
}

static void pol_on_spte_set(Core *self, int cpu, i64 ref, int speculative, int ptwrite) {
    policy_t *p = &self->pol;
    if (pol_flood(p)) {
        if (p->v20)
            return;
        cpu_state_t *s = cpu_state(self, cpu);
        if (p->v27) {
            if (speculative) {
                s->last_pte = ref;
                u64 spte = ref_spte(self, ref);
                s->has_pte_gfn = 1;
                s->last_pte_gfn = spte ? (i64)(spte >> 12) : -1;
            }
        } else if (!ptwrite) {
            s->last_pte = ref;
        }
    } else if (p->base == B_SKI) {
        if (speculative && self->ski_written_gfn >= 0 &&
            map_get(&self->ski_writes, (u64)self->ski_written_gfn)) {
            vec_t *refs = vecmap_ref(&self->ski_spec, (u64)self->ski_written_gfn);
            if (!refs || vec_push(refs, (u64)ref) < 0)
                OOM(self);
        }
    }
}

static void ski_used(Core *self, u64 gfn) {
    u64 *slot;
    if (map_get(&self->ski_writes, gfn) && (slot = map_ref(&self->ski_writes, gfn)))
        *slot = 0;
    if (map_get(&self->ski_threshold, gfn) && (slot = map_ref(&self->ski_threshold, gfn)))
        *slot = 0;
    vec_t *refs = vecmap_get(&self->ski_spec, gfn);
    if (refs)
        refs->n = 0;
}

static void pol_on_shadow_walk(Core *self, int cpu, int level, u64 gfn) {
    if (self->pol.base == B_SKI && level == 1 && map_get(&self->ski_writes, gfn))
        ski_used(self, gfn);
}

static void pol_on_shadow_fault(Core *self, int cpu, int ptwrite) {
    policy_t *p = &self->pol;
    if (pol_flood(p)) {
        if (!p->v20 && !ptwrite)
            cpu_state(self, cpu)->count = 0;
    } else if (pol_xen(p)) {
        if (!ptwrite)
            cpu_state(self, cpu)->xen_last = -1;
    }
}

static void pol_on_guest_fault(Core *self, int cpu) {
    policy_t *p = &self->pol;
    if (pol_flood(p)) {
        if (!p->v20)
            cpu_state(self, cpu)->count = 0;
    } else if (pol_xen(p)) {
        cpu_state(self, cpu)->xen_last = -1;
    }
}

static void oos_forget(Core *self, u64 gfn) {
    for (int c = 0; c < self->cpus; c++)
        for (int i = 0; i < self->pol.oos_limit; i++)
            if (self->cs[c].oos[i] == (i64)gfn)
                self->cs[c].oos[i] = -1;
}

static void pol_on_zap(Core *self, u64 gfn, int level) {
    policy_t *p = &self->pol;
    if (pol_flood(p)) {
        if (!p->v20)
            for (int c = 0; c < self->cpus; c++)
                self->cs[c].last_pte = -1;
    } else if (p->base == B_XEN_OOS) {
        if (level == 1)
            oos_forget(self, gfn);
    }
}

/* XenOOS.on_cr3: this vCPU's table first, then the others' in vCPU order */
static void pol_on_cr3(Core *self, int cpu) {
    if (self->pol.base != B_XEN_OOS)
        return;
    for (int k = -1; k < self->cpus && !self->failed; k++) {
        int c = k < 0 ? cpu : k;
        if (k >= 0 && c == cpu)
            continue;
        i64 *table = self->cs[c].oos;
        for (int i = 0; i < self->pol.oos_limit && !self->failed; i++) {
            if (table[i] >= 0) {
                u64 gfn = (u64)table[i];
                table[i] = -1;
                resync_gfn(self, gfn);
            }
        }
    }
}

/* Policy.unsync_on_map (only asked when the base unsyncs) */
static int pol_unsync_on_map(Core *self, int cpu, u64 gfn, int write_fault) {
    if (self->pol.base == B_UNSYNC)
        return 1;
    /* XenOOS.unsync_on_map: oos_hash_add */
    if (!write_fault)
        return 0;
    oos_forget(self, gfn);
    i64 *oos = self->cs[cpu].oos;
    int n = self->pol.oos_limit;
    int idx = (int)(gfn % (u64)n);
    i64 g = (i64)gfn;
    i64 home = oos[idx];
    if (n > 1 && home >= 0 && (u64)home % (u64)n == (u64)idx) {
        oos[idx] = g;
        g = home;
        idx = (idx + 1) % n;
    }
    i64 victim = oos[idx];
    oos[idx] = g;
    if (victim >= 0)
        resync_gfn(self, (u64)victim);
    return 1;
}

/* the next ski-rental threshold: fixed, or drawn (ski-rental-random, drawn in Python ahead) */
static i64 ski_next_threshold(Core *self) {
    policy_t *p = &self->pol;
    if (!p->draw)
        return p->ski_threshold;
    if (p->next_drawn >= p->ndrawn) {
        PyObject *got = PyObject_CallNoArgs(p->draw);
        if (!got) {
            self->failed = 1;
            return 1;
        }
        Py_ssize_t n = PySequence_Length(got);
        i64 *drawn = n > 0 ? realloc(p->drawn, n * sizeof(i64)) : NULL;
        if (!drawn) {
            Py_DECREF(got);
            if (n >= 0)
                OOM(self);
            else
                self->failed = 1;
            return 1;
        }
        p->drawn = drawn;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = PySequence_GetItem(got, i);
            drawn[i] = item ? PyLong_AsLongLong(item) : -1;
            Py_XDECREF(item);
        }
        Py_DECREF(got);
        if (PyErr_Occurred()) {
            self->failed = 1;
            return 1;
        }
        p->ndrawn = n;
        p->next_drawn = 0;
    }
    return p->drawn[p->next_drawn++];
}

/* Policy.on_write_fault (only asked when the policy decides writes) */
typedef struct {
    u64 gfn, old_gpte;
    i64 bit;
    int is_btr, can_unsync;
} fault_t;

static int pol_on_write_fault(Core *self, const fault_t *f) {
    policy_t *p = &self->pol;
    if (p->accessed_clear && f->is_btr && f->bit == 5 && (f->old_gpte & 1) == 1)
        return D_UNSHADOW_NATIVE; /* WriteFault.clears_accessed */
    switch (p->base) {
    case B_UNSHADOW:
        return D_UNSHADOW;
    case B_UNSYNC:
        return f->can_unsync ? D_UNSYNC : D_EMULATE;
    case B_SKI: { /* SkiRental.on_write_fault */
        u64 gfn = f->gfn;
        vec_t *refs = vecmap_get(&self->ski_spec, gfn);
        if (refs && refs->n) {
            for (u32 i = 0; i < refs->n; i++) {
                if (ref_spte(self, (i64)refs->v[i]) & SPTE_A) {
                    ski_used(self, gfn);
                    break;
                }
            }
        }
        u64 wv = map_get(&self->ski_writes, gfn);
        i64 writes = (wv ? (i64)wv - 1 : 0) + 1;
        u64 *slot;
        if (writes == 1) {
            i64 t = ski_next_threshold(self);
            if (self->failed || !(slot = map_ref(&self->ski_threshold, gfn))) {
                if (!self->failed)
                    OOM(self);
                return D_EMULATE;
            }
            *slot = (u64)t + 1;
        }
        i64 threshold = (i64)map_get(&self->ski_threshold, gfn) - 1;
        if (writes >= threshold) {
            ski_used(self, gfn);
            return D_UNSHADOW;
        }
        if (!(slot = map_ref(&self->ski_writes, gfn))) {
            OOM(self);
            return D_EMULATE;
        }
        *slot = (u64)writes + 1;
        return D_EMULATE;
    }
    case B_ORACLE: { /* Oracle.on_write_fault */
        u64 gfn = f->gfn;
        vec_t *plan = vecmap_get(&self->oracle_plan, gfn);
        if (!plan)
            return D_EMULATE;
        u64 *next = map_ref(&self->oracle_next, gfn), *countp = map_ref(&self->oracle_count, gfn);
        if (!next || !countp) {
            OOM(self);
            return D_EMULATE;
        }
        u64 i = *next;
        if (i >= plan->n) {
            self->failed = 1;
            PyErr_Format(BenchError, "oracle replay diverged from the record at gfn %#llx",
                         (unsigned long long)gfn);
            return D_EMULATE;
        }
        u64 writes = plan->v[i] >> 1;
        int unshadow = (int)(plan->v[i] & 1);
        u64 count = *countp;
        if (count == 0 && unshadow) {
            *next = i + 1;
            if (p->oracle_native)
                return D_UNSHADOW_NATIVE;
            self->oracle_zap_gfn = (i64)gfn;
            return D_EMULATE;
        }
        count += 1;
        if (count == writes) {
            *next = i + 1;
            count = 0;
        }
        *countp = count;
        return D_EMULATE;
    }
    default:
        return D_EMULATE;
    }
}

static inline int pol_decides_writes(const policy_t *p) {
    return p->accessed_clear || p->base == B_UNSHADOW || p->base == B_UNSYNC ||
           p->base == B_SKI || p->base == B_ORACLE;
}

/* ------------------------------------------------------------------ shadow-page pool */
static int32_t new_page(Core *self, u64 gfn, int level, int quadrant, int direct) {
    if (self->nsp == self->capsp) {
        size_t cap = self->capsp ? self->capsp * 2 : 256;
        sp_t *sps = realloc(self->sps, cap * sizeof(sp_t));
        if (!sps)
            return -1;
        self->sps = sps;
        self->capsp = cap;
    }
    if (self->nsp >= (1ULL << 40))
        return -1;
    sp_t *sp = &self->sps[self->nsp];
    memset(sp, 0, sizeof(*sp));
    sp->gfn = gfn;
    sp->level = level;
    sp->quadrant = quadrant;
    sp->direct = direct;
    if (level == 1) {
        sp->sptes = calloc(512, sizeof(u64));
        if (!sp->sptes)
            return -1;
    } else {
        sp->children = malloc(512 * sizeof(int32_t));
        if (!sp->children)
            return -1;
        for (int i = 0; i < 512; i++)
            sp->children[i] = -1;
    }
    return (int32_t)self->nsp++;
}

/* the sptes of a level-1 page, allocated again if a zap freed them (an spte set on a page
 * zapped under it, as the Python reference allows) */
static u64 *sp_sptes(Core *self, sp_t *sp) {
    if (!sp->sptes) {
        sp->sptes = calloc(512, sizeof(u64));
        if (!sp->sptes)
            OOM(self);
    }
    return sp->sptes;
}

/* ------------------------------------------------------------------ bypass (notrap entries) */
/* ShadowMachine._notrap */
static int notrap(Core *self, sp_t *sp, int idx) {
    if (bit_get(sp->notrap, idx))
        return 1;
    if (!sp->prefetched || bit_get(sp->trap, idx))
        return 0;
    u64 base = sp->gfn << 12;
    if (self->pae)
        return !(mem_entry(&self->mem, base + ((u64)idx << 3), 1) & 1);
    return !(mem_entry(&self->mem, base + ((((u64)sp->quadrant << 9) + idx) << 2), 0) & 1);
}

/* ShadowMachine._set_nonpresent */
static void set_nonpresent(sp_t *sp, int idx, int is_notrap) {
    if (is_notrap) {
        bit_set(sp->notrap, idx);
        bit_clear(sp->trap, idx);
    } else {
        bit_clear(sp->notrap, idx);
        if (sp->prefetched)
            bit_set(sp->trap, idx);
    }
}

/* ------------------------------------------------------------------ rmap */
static void rmap_remove(Core *self, u64 gfn, int32_t id, int idx) {
    vec_t *v = vecmap_get(&self->rmap, gfn);
    if (!v)
        return;
    int i = vec_find(v, ((u64)id << 9) | (u64)idx);
    if (i >= 0) {
        v->v[i] = v->v[v->n - 1]; /* the rmap is a set: order does not matter */
        v->n--;
    }
}

/* ShadowMachine._write_protect (rmap_write_protect) */
static void write_protect(Core *self, u64 gfn) {
    vec_t *v = vecmap_get(&self->rmap, gfn);
    if (!v)
        return;
    for (u32 i = 0; i < v->n; i++) {
        sp_t *sp = &self->sps[v->v[i] >> 9];
        u64 *sptes = sp_sptes(self, sp);
        if (sptes)
            sptes[v->v[i] & 511] &= ~SPTE_W;
    }
}

static inline int has_pages(Core *self, u64 gfn) {
    vec_t *v = vecmap_get(&self->by_gfn, gfn);
    return v && v->n;
}

/* ShadowMachine._protected */
static int protected_gfn(Core *self, u64 gfn) {
    vec_t *v = vecmap_get(&self->by_gfn, gfn);
    if (!v)
        return 0;
    for (u32 i = 0; i < v->n; i++)
        if (!self->sps[v->v[i]].unsync)
            return 1;
    return 0;
}

/* ShadowMachine._can_unsync */
static int can_unsync(Core *self, u64 gfn) {
    vec_t *v = vecmap_get(&self->by_gfn, gfn);
    if (!v || !v->n)
        return 0;
    int quadrant = self->sps[v->v[0]].quadrant;
    for (u32 i = 0; i < v->n; i++) {
        sp_t *sp = &self->sps[v->v[i]];
        if (sp->level != 1 || sp->quadrant != quadrant)
            return 0;
    }
    return 1;
}

/* ShadowMachine._unsync */
static void unsync_gfn(Core *self, u64 gfn) {
    vec_t *v = vecmap_get(&self->by_gfn, gfn);
    if (!v)
        return;
    for (u32 i = 0; i < v->n; i++) {
        sp_t *sp = &self->sps[v->v[i]];
        if (!sp->unsync) {
            sp->unsync = 1;
            if (vec_push(&self->unsync_pages, v->v[i]) < 0) {
                OOM(self);
                return;
            }
            self->counters[C_mmu_unsync]++;
            sp->prefetched = 0;
            memset(sp->notrap, 0, sizeof(sp->notrap));
            memset(sp->trap, 0, sizeof(sp->trap));
        }
    }
}

static void unsync_pages_discard(Core *self, int32_t id) {
    int i = vec_find(&self->unsync_pages, (u64)id);
    if (i >= 0) {
        self->unsync_pages.v[i] = self->unsync_pages.v[self->unsync_pages.n - 1];
        self->unsync_pages.n--;
    }
}

/* ShadowMachine._get_page (kvm_mmu_get_page); -1 on error */
static int32_t get_page(Core *self, u64 gfn, int level, int quadrant, int direct) {
    if (!direct)
        resync_gfn(self, gfn); /* syncs the unsync pages it meets */
    if (self->failed)
        return -1;
    u64 key = sp_key(gfn, level, quadrant, direct);
    u64 found = map_get(&self->pages, key);
    if (found) {
        self->sps[found - 1].write_flooding_count = 0;
        return (int32_t)(found - 1);
    }
    self->counters[C_mmu_cache_miss]++;
    int32_t id = new_page(self, gfn, level, quadrant, direct);
    u64 *slot = id < 0 ? NULL : map_ref(&self->pages, key);
    if (!slot) {
        OOM(self);
        return -1;
    }
    *slot = (u64)id + 1;
    sp_t *sp = &self->sps[id];
    sp->prefetched = self->bypass && !direct && (self->pae || level == 1);
    if (!direct) {
        vec_t *v = vecmap_ref(&self->by_gfn, gfn);
        if (!v || vec_push(v, (u64)id) < 0) {
            OOM(self);
            return -1;
        }
        write_protect(self, gfn);
    }
    return id;
}

/* ShadowMachine._zap_page (kvm_mmu_zap_page) */
static void zap_page(Core *self, int32_t id) {
    sp_t *sp = &self->sps[id];
    self->counters[C_mmu_shadow_zapped]++;
    if (sp->level == 1) {
        if (sp->sptes) {
            for (int idx = 0; idx < 512; idx++)
                if (sp->sptes[idx])
                    rmap_remove(self, sp->sptes[idx] >> 12, id, idx);
            free(sp->sptes);
            sp->sptes = NULL;
        }
        sp->nsptes = 0;
    } else if (sp->children) {
        for (int idx = 0; idx < 512; idx++) {
            int32_t child = sp->children[idx];
            if (child >= 0) {
                vec_t *pv = &self->sps[child].parents;
                int i = vec_find(pv, ((u64)id << 9) | (u64)idx);
                if (i >= 0) {
                    pv->v[i] = pv->v[pv->n - 1];
                    pv->n--;
                }
                sp->children[idx] = -1;
            }
        }
    }
    for (u32 k = 0; k < sp->parents.n; k++) {
        u64 link = sp->parents.v[k];
        sp_t *parent = &self->sps[link >> 9];
        int idx = (int)(link & 511);
        if (parent->children && parent->children[idx] == id) {
            parent->children[idx] = -1;
            if (self->bypass)
                set_nonpresent(parent, idx, 0);
        }
    }
    sp->parents.n = 0;
    u64 *slot = map_ref(&self->pages, sp_key(sp->gfn, sp->level, sp->quadrant, sp->direct));
    if (slot)
        *slot = 0;
    if (!sp->direct) {
        vec_t *v = vecmap_get(&self->by_gfn, sp->gfn);
        if (v) {
            int i = vec_find(v, (u64)id);
            if (i >= 0)
                vec_remove_at(v, (u32)i);
        }
    }
    if (sp->unsync) {
        sp->unsync = 0;
        unsync_pages_discard(self, id);
    }
    if (sp->root_count) {
        for (int cpu = 0; cpu < self->cpus; cpu++) {
            for (int i = 0; i < 4; i++) {
                if (self->roots[cpu * 4 + i] == id) {
                    self->roots[cpu * 4 + i] = -1;
                    self->reload[cpu] = 1;
                    sp->root_count--;
                }
            }
        }
    }
    sp->zapped = 1;
    pol_on_zap(self, sp->gfn, sp->level);
}

/* ShadowMachine._unshadow */
static void unshadow(Core *self, u64 gfn) {
    vec_t *v = vecmap_get(&self->by_gfn, gfn);
    if (!v || !v->n)
        return;
    u32 n = v->n;
    u64 ids[n];
    memcpy(ids, v->v, n * sizeof(u64));
    for (u32 i = 0; i < n; i++)
        zap_page(self, (int32_t)ids[i]);
}

/* ShadowMachine._sync_page (kvm_sync_page) */
static void sync_page(Core *self, int32_t id) {
    sp_t *sp = &self->sps[id];
    u64 *c = self->counters;
    c[C_mmu_resync]++;
    int pae = self->pae;
    u64 base = sp->gfn << 12;
    if (sp->sptes) {
        for (int idx = 0; idx < 512; idx++) {
            u64 spte = sp->sptes[idx];
            if (!spte)
                continue;
            c[C_mmu_resync_gpte]++;
            u64 gpa = base + (pae ? ((u64)idx << 3) : ((((u64)sp->quadrant << 9) + idx) << 2));
            u64 gpte = mem_entry(&self->mem, gpa, pae);
            if ((gpte & 0x21) != 0x21 || ((gpte & ADDR_MASK_PAE) >> 12) != (spte >> 12)) {
                sp->sptes[idx] = 0;
                sp->nsptes--;
                rmap_remove(self, spte >> 12, id, idx);
                if (self->bypass)
                    set_nonpresent(sp, idx, !(gpte & 1));
            } else if ((spte & SPTE_W) && !((gpte & 0x2) && (gpte & 0x40))) {
                sp->sptes[idx] = spte & ~SPTE_W;
            }
        }
    }
    sp->unsync = 0;
    unsync_pages_discard(self, id);
    write_protect(self, sp->gfn);
    if (sp->nsptes == 0 && self->sync_zaps_empty)
        zap_page(self, id);
}

static int cmp_keys(const void *a, const void *b) {
    u64 x = ((const u64 *)a)[0], y = ((const u64 *)b)[0];
    return x < y ? -1 : x > y;
}

/* ShadowMachine._sync_reachable (kvm_mmu_sync_roots) */
static void sync_reachable(Core *self, int cpu) {
    u32 n = self->unsync_pages.n;
    if (!n)
        return;
    u64 (*order)[2] = malloc(n * sizeof(*order));
    if (!order) {
        OOM(self);
        return;
    }
    for (u32 i = 0; i < n; i++) {
        sp_t *sp = &self->sps[self->unsync_pages.v[i]];
        order[i][0] = sp_key(sp->gfn, sp->level, sp->quadrant, sp->direct);
        order[i][1] = self->unsync_pages.v[i];
    }
    qsort(order, n, sizeof(*order), cmp_keys);
    int32_t *roots = &self->roots[cpu * 4];
    for (u32 i = 0; i < n && !self->failed; i++) {
        sp_t *sp = &self->sps[order[i][1]];
        int reachable = 0;
        for (u32 k = 0; k < sp->parents.n && !reachable; k++) {
            int32_t parent = (int32_t)(sp->parents.v[k] >> 9);
            for (int r = 0; r < 4; r++)
                if (roots[r] >= 0 && roots[r] == parent)
                    reachable = 1;
        }
        if (reachable)
            sync_page(self, (int32_t)order[i][1]);
    }
    free(order);
}

/* ShadowMachine._need_write_protect (mmu_need_write_protect) */
static int need_write_protect(Core *self, int cpu, u64 gfn, int write_fault) {
    if (!protected_gfn(self, gfn))
        return 0;
    int base = self->pol.base;
    if ((base == B_UNSYNC || base == B_XEN_OOS) && can_unsync(self, gfn) &&
        pol_unsync_on_map(self, cpu, gfn, write_fault)) {
        unsync_gfn(self, gfn);
        self->unsynced = 1;
        return 0;
    }
    return 1;
}

/* ShadowMachine._set_spte (mmu_set_spte); returns ptwrite */
static int set_spte(Core *self, int cpu, int32_t id, int idx, u64 gfn, int writable, int dirty,
                    int write_fault, int user_fault, int speculative) {
    sp_t *sp = &self->sps[id];
    u64 old = sp->sptes ? sp->sptes[idx] : 0;
    if (old && (old >> 12) != gfn) {
        rmap_remove(self, old >> 12, id, idx);
        old = 0;
    }
    u64 spte = (gfn << 12) | SPTE_P;
    if (!speculative)
        spte |= SPTE_A;
    int ptwrite = 0;
    if (writable && dirty) {
        if (user_fault && self->user_fault_unshadow) {
            if (has_pages(self, gfn))
                unshadow(self, gfn);
            spte |= SPTE_W;
        } else if (has_pages(self, gfn) && need_write_protect(self, cpu, gfn, write_fault)) {
            ptwrite = write_fault;
        } else {
            spte |= SPTE_W;
        }
    }
    if (self->failed)
        return 0;
    sp = &self->sps[id];
    u64 *sptes = sp_sptes(self, sp);
    if (!sptes)
        return 0;
    /* (the slot may have been emptied by a zap or sync above: count what is there now) */
    if (!sptes[idx])
        sp->nsptes++;
    sptes[idx] = spte;
    if (!old) {
        vec_t *v = vecmap_ref(&self->rmap, gfn);
        if (!v || vec_push(v, ((u64)id << 9) | (u64)idx) < 0) {
            OOM(self);
            return 0;
        }
    }
    pol_on_spte_set(self, cpu, ((i64)id << 9) | idx, speculative, ptwrite);
    return ptwrite;
}

/* ------------------------------------------------------------------ kvm_mmu_pte_write */
/* ShadowMachine._mmu_pte_write; fills *out with the write the policy saw */
static void mmu_pte_write(Core *self, int cpu, u64 gpa, i64 nbytes, int is_btr, u64 old_gpte,
                          u64 new_gpte, int extra, int walker, ptewrite_t *out) {
    u64 gfn = gpa >> 12;
    u64 *c = self->counters;
    c[C_mmu_pte_write]++;
    u64 offset = gpa & 0xFFF;
    ptewrite_t w = {cpu, gpa, gfn, offset, nbytes, self->esize, is_btr, old_gpte, new_gpte,
                    extra, walker};
    *out = w;
    int zap = pol_on_pte_write(self, &w) || pw_misaligned(&w);
    vec_t *v = vecmap_get(&self->by_gfn, gfn);
    if (!v || !v->n)
        return;
    u32 n = v->n;
    u64 ids[n];
    memcpy(ids, v->v, n * sizeof(u64));
    int flood_page = self->pol.base == B_PERPAGE;
    for (u32 k = 0; k < n && !self->failed; k++) {
        int32_t id = (int32_t)ids[k];
        sp_t *sp = &self->sps[id];
        if (sp->zapped)
            continue;
        if (zap || (flood_page && pol_on_pte_write_page(self, &w, sp))) {
            zap_page(self, id);
            c[C_mmu_flooded]++;
            continue;
        }
        int indexes[2], nidx = 1;
        if (self->pae) {
            indexes[0] = (int)(offset >> 3);
        } else if (!self->quadrant_filter) {
            indexes[0] = (int)(((offset << 1) & 0xFFF) >> 3);
        } else {
            u64 gi = offset >> 2;
            if (sp->level == 1) {
                if ((int)(gi >> 9) != sp->quadrant)
                    continue;
                indexes[0] = (int)(gi & 0x1FF);
            } else {
                if ((int)(gi >> 8) != sp->quadrant)
                    continue;
                int base = (int)(gi & 0xFF) * 2;
                indexes[0] = base;
                indexes[1] = base + 1;
                nidx = 2;
            }
        }
        u64 gpte = new_gpte;
        for (int j = 0; j < nidx && !self->failed; j++) {
            int idx = indexes[j];
            sp = &self->sps[id];
            if (sp->level == 1) {
                u64 old = sp->sptes ? sp->sptes[idx] : 0;
                if (old) {
                    sp->sptes[idx] = 0;
                    sp->nsptes--;
                    rmap_remove(self, old >> 12, id, idx);
                }
                if (self->update_spte) {
                    c[C_mmu_pte_updated]++;
                    if ((gpte & 0x21) == 0x21 && nbytes >= 4) {
                        set_spte(self, cpu, id, idx, (gpte & ADDR_MASK_PAE) >> 12,
                                 (gpte & 0x2) != 0, (gpte & 0x40) != 0, 0, 0, 1);
                    } else if (self->bypass) {
                        set_nonpresent(sp, idx, !(gpte & 1));
                    }
                } else if (self->bypass) {
                    set_nonpresent(sp, idx, 0);
                }
            } else {
                int32_t child = sp->children ? sp->children[idx] : -1;
                if (child >= 0) {
                    sp->children[idx] = -1;
                    vec_t *pv = &self->sps[child].parents;
                    int i = vec_find(pv, ((u64)id << 9) | (u64)idx);
                    if (i >= 0) {
                        pv->v[i] = pv->v[pv->n - 1];
                        pv->n--;
                    }
                }
                if (self->bypass)
                    set_nonpresent(sp, idx, 0);
                if (self->update_spte)
                    c[C_mmu_pde_zapped]++;
            }
        }
    }
}

/* ShadowMachine._after_emulated_write */
static void after_emulated_write(Core *self, int cpu, u64 gpa, int kind, i64 arg, int insn,
                                 u64 old_gpte, u64 new_gpte, int extra) {
    ptewrite_t w;
    int is_btr = insn >= 0 && insn < self->ninsn && self->insn_btr[insn];
    if (kind == K_STORE)
        mmu_pte_write(self, cpu, gpa, arg, is_btr, old_gpte, new_gpte, extra, 0, &w);
    else
        mmu_pte_write(self, cpu, gpa & ~3ULL, 4, is_btr, old_gpte, new_gpte, extra, 0, &w);
    if (!extra && self->pol.batch) { /* XenBatch.extra_emulation */
        i64 n = (self->pol.batch_pae_only && w.pte_size != 8) ? 0 : self->pol.batch_extra;
        if (n > 0)
            self->batch[cpu] = n;
    }
}

/* ShadowMachine._emulate_write (emulator_write_phys) */
static void emulate_write(Core *self, int cpu, u64 gpa, int kind, i64 arg, u64 value, int insn,
                          int extra) {
    u64 entry_gpa = gpa & ~(u64)(self->esize - 1);
    u64 old_gpte = mem_entry(&self->mem, entry_gpa, self->pae);
    if (apply_write(self, gpa, kind, arg, value) < 0) {
        OOM(self);
        return;
    }
    u64 new_gpte = mem_entry(&self->mem, entry_gpa, self->pae);
    after_emulated_write(self, cpu, gpa, kind, arg, insn, old_gpte, new_gpte, extra);
}

/* ------------------------------------------------------------------ faults */
/* ShadowMachine._fetch */
static int fetch(Core *self, int cpu, u64 vaddr, const walk_t *w, int write, int user) {
    int32_t root = self->roots[cpu * 4 + (vaddr >> 30)];
    if (root < 0) {
        load_roots(self, cpu);
        if (self->failed)
            return FIXED;
        root = self->roots[cpu * 4 + (vaddr >> 30)];
        if (root < 0) {
            self->failed = 1;
            PyErr_Format(BenchError, "no shadow root for %#llx: the guest changed its PDPT "
                         "without reloading cr3", (unsigned long long)vaddr);
            return FIXED;
        }
    }
    self->sps[root].write_flooding_count = 0;
    pol_on_shadow_walk(self, cpu, self->sps[root].level, self->sps[root].gfn);
    int i2 = (int)((vaddr >> 21) & 0x1FF);
    int32_t child = self->sps[root].children[i2];
    if (child < 0) {
        if (w->pt_gfn < 0)
            child = get_page(self, w->gfn & ~0x1FFULL, 1, 0, 1);
        else
            child = get_page(self, (u64)w->pt_gfn, 1, self->pae ? 0 : (int)((vaddr >> 21) & 1),
                             0);
        if (child < 0)
            return FIXED;
        self->sps[root].children[i2] = child;
        vec_t *pv = &self->sps[child].parents;
        u64 link = ((u64)root << 9) | (u64)i2;
        if (vec_find(pv, link) < 0 && vec_push(pv, link) < 0) {
            OOM(self);
            return FIXED;
        }
    }
    self->sps[child].write_flooding_count = 0;
    pol_on_shadow_walk(self, cpu, self->sps[child].level, self->sps[child].gfn);
    int ptwrite = set_spte(self, cpu, child, (int)((vaddr >> 12) & 0x1FF), w->gfn, w->writable,
                           w->dirty, write, user, 0);
    return ptwrite ? PTWRITE : FIXED;
}

/* ShadowMachine._page_fault (FNAME(page_fault)) */
static int page_fault(Core *self, int cpu, u64 vaddr, int write) {
    u64 *c = self->counters;
    if (self->reload[cpu]) {
        load_roots(self, cpu);
        if (self->failed)
            return GUEST_FAULT;
    }
    int user = vaddr < PAGE_OFFSET;
    walk_t w;
    int ok = walk(self, self->cr3[cpu], vaddr, write, user, &w);
    if (ok < 0) {
        OOM(self);
        return GUEST_FAULT;
    }
    if (!ok) {
        c[C_exit_guest_fault]++;
        c[C_pf_guest]++;
        pol_on_guest_fault(self, cpu);
        return GUEST_FAULT;
    }
    self->last_walk = w;
    if (w.dirtied && self->dirty_bit_pte_write) {
        ptewrite_t pw;
        mmu_pte_write(self, cpu, w.leaf_gpa, self->esize, 0, w.leaf & ~0x40ULL, w.leaf, 0, 1,
                      &pw);
        if (self->failed)
            return GUEST_FAULT;
    }
    self->unsynced = 0;
    int status = fetch(self, cpu, vaddr, &w, write, user);
    if (self->failed)
        return GUEST_FAULT;
    c[C_pf_fixed]++;
    if (status == FIXED) {
        if (self->unsynced && write)
            c[C_exit_ptwrite_unsync]++;
        else
            c[C_exit_hidden_fault]++;
    }
    pol_on_shadow_fault(self, cpu, status == PTWRITE);
    return status;
}

/* shadow._written_word */
static u32 written_word(u32 old, u64 gpa, int kind, i64 arg, u64 value) {
    if (kind == K_BTR)
        return old & ~(1u << (arg & 31));
    if (kind == K_BTS)
        return old | (1u << (arg & 31));
    int shift = 8 * (int)(gpa & 3);
    i64 width = arg < (i64)(4 - (gpa & 3)) ? arg : (i64)(4 - (gpa & 3));
    u64 mask = (((1ULL << (8 * width)) - 1) << shift) & 0xFFFFFFFFULL;
    return (u32)((old & ~mask) | ((value << shift) & mask));
}

/* shadow._gpte_after */
static u64 gpte_after(u64 gpte, u64 entry_gpa, int esize, u64 gpa, int kind, i64 arg, u64 value,
                      u32 new_word) {
    if (kind != K_STORE) {
        gpa &= ~3ULL;
        arg = 4;
        value = new_word;
    }
    i64 start = (i64)gpa - (i64)entry_gpa;
    if (start < 0) {
        value >>= -8 * start;
        arg += start;
        start = 0;
    }
    i64 width = arg < esize - start ? arg : esize - start;
    if (width <= 0)
        return gpte;
    u64 ones = width >= 8 ? ~0ULL : ((1ULL << (8 * width)) - 1);
    u64 mask = ones << (8 * start);
    return (gpte & ~mask) | ((value << (8 * start)) & mask);
}

/* ShadowMachine._make_writable_and_write */
static void make_writable_and_write(Core *self, int cpu, u64 vaddr, int kind, i64 arg, u64 value,
                                    int insn) {
    int32_t sp2 = self->roots[cpu * 4 + (vaddr >> 30)];
    int32_t sp1 = sp2 < 0 ? -1 : self->sps[sp2].children[(vaddr >> 21) & 0x1FF];
    int idx = (int)((vaddr >> 12) & 0x1FF);
    u64 spte = (sp1 < 0 || !self->sps[sp1].sptes) ? 0 : self->sps[sp1].sptes[idx];
    if (sp1 < 0 || !spte || protected_gfn(self, spte >> 12)) {
        write_fault(self, kind, cpu, vaddr, arg, value, insn, 1);
        return;
    }
    self->sps[sp1].sptes[idx] = spte | SPTE_W | SPTE_A;
    if (apply_write(self, ((spte >> 12) << 12) | (vaddr & 0xFFF), kind, arg, value) < 0)
        OOM(self);
}

/* ShadowMachine._write_fault */
static void write_fault(Core *self, int kind, int cpu, u64 vaddr, i64 arg, u64 value, int insn,
                        int retry) {
    int status = page_fault(self, cpu, vaddr, 1);
    if (status == GUEST_FAULT || self->failed)
        return;
    walk_t w = self->last_walk;
    u64 gpa = (w.gfn << 12) | (vaddr & 0xFFF);
    if (status != PTWRITE) {
        if (apply_write(self, gpa, kind, arg, value) < 0)
            OOM(self);
        return;
    }
    u64 gfn = w.gfn;
    u64 *c = self->counters;
    if (self->user_write_unshadow && !retry && vaddr < PAGE_OFFSET) {
        c[C_exit_ptwrite_unshadow]++;
        unshadow(self, gfn);
        write_fault(self, kind, cpu, vaddr, arg, value, insn, 1);
        return;
    }
    if (!pol_decides_writes(&self->pol)) {
        c[C_exit_ptwrite_emulate]++;
        c[C_insn_emulation]++;
        emulate_write(self, cpu, gpa, kind, arg, value, insn, 0);
        return;
    }
    int pae = self->pae, esize = self->esize;
    u64 entry_gpa = gpa & ~(u64)(esize - 1);
    u64 old_gpte = mem_entry(&self->mem, entry_gpa, pae);
    u32 old_word = mem_word(&self->mem, gpa & ~3ULL);
    u32 new_word = written_word(old_word, gpa, kind, arg, value);
    u64 new_gpte = gpte_after(old_gpte, entry_gpa, esize, gpa, kind, arg, value, new_word);
    vec_t *sps = vecmap_get(&self->by_gfn, gfn);
    int leaf_only = 1;
    for (u32 i = 0; sps && i < sps->n; i++) {
        if (self->sps[sps->v[i]].level != 1) {
            leaf_only = 0;
            break;
        }
    }
    fault_t f = {gfn, old_gpte, kind != K_STORE ? arg : -1,
                 insn >= 0 && insn < self->ninsn && self->insn_btr[insn],
                 leaf_only && can_unsync(self, gfn)};
    int decision = pol_on_write_fault(self, &f);
    if (self->failed)
        return;
    if ((decision == D_UNSYNC && !f.can_unsync) ||
        (retry && (decision == D_UNSHADOW || decision == D_UNSHADOW_NATIVE)))
        decision = D_EMULATE;
    switch (decision) {
    case D_EMULATE:
        c[C_exit_ptwrite_emulate]++;
        c[C_insn_emulation]++;
        if (apply_write(self, gpa, kind, arg, value) < 0) {
            OOM(self);
            return;
        }
        after_emulated_write(self, cpu, gpa, kind, arg, insn, old_gpte, new_gpte, 0);
        break;
    case D_UNSHADOW:
        c[C_exit_ptwrite_unshadow]++;
        unshadow(self, gfn);
        write_fault(self, kind, cpu, vaddr, arg, value, insn, 1);
        break;
    case D_UNSHADOW_NATIVE:
        c[C_exit_ptwrite_unshadow]++;
        unshadow(self, gfn);
        make_writable_and_write(self, cpu, vaddr, kind, arg, value, insn);
        break;
    case D_UNSYNC:
        c[C_exit_ptwrite_unsync]++;
        unsync_gfn(self, gfn);
        make_writable_and_write(self, cpu, vaddr, kind, arg, value, insn);
        break;
    }
}

/* ------------------------------------------------------------------ extra emulation */
/* ShadowMachine._emulate_extra; 1 when the operation was emulated here */
static int emulate_extra(Core *self, int kind, int cpu, u64 addr, i64 arg, u64 value, int insn) {
    if (kind == K_MARK)
        return 0;
    u64 *c = self->counters;
    i64 left = self->batch[cpu];
    if (kind == K_COMPUTE) {
        i64 v = (i64)value;
        i64 used = (v <= 0 || v >= left) ? left : v;
        c[C_insn_emulation_extra] += (u64)used;
        c[C_insn_emulation_extra_non_pt] += (u64)used;
        self->batch[cpu] = left - used;
        return 0;
    }
    if (kind == K_INVLPG || kind == K_CR3) {
        self->batch[cpu] = 0;
        return 0;
    }
    if (addr < PAGE_OFFSET) {
        c[C_insn_emulation_extra] += (u64)left;
        c[C_insn_emulation_extra_non_pt] += (u64)left;
        self->batch[cpu] = 0;
        return 0;
    }
    int write = kind != K_LOAD;
    walk_t w;
    int ok = walk(self, self->cr3[cpu], addr, write, 0, &w);
    if (ok < 0) {
        OOM(self);
        return 1;
    }
    if (!ok) {
        self->batch[cpu] = 0;
        return 0;
    }
    c[C_insn_emulation_extra]++;
    count_native(self, kind, arg);
    if (write) {
        u64 gpa = (w.gfn << 12) | (addr & 0xFFF);
        if (has_pages(self, w.gfn)) {
            self->batch[cpu] = 0;
            emulate_write(self, cpu, gpa, kind, arg, value, insn, 1);
            return 1;
        }
        if (apply_write(self, gpa, kind, arg, value) < 0) {
            OOM(self);
            return 1;
        }
    }
    c[C_insn_emulation_extra_non_pt]++;
    self->batch[cpu] = left - 1;
    return 1;
}

/* ------------------------------------------------------------------ invlpg, cr3 */
static void invlpg(Core *self, int cpu, u64 vaddr) {
    if (!self->intercept_invlpg)
        return;
    self->counters[C_exit_invlpg]++;
    self->counters[C_invlpg]++;
    if (self->invlpg_drops_spte) {
        int32_t sp2 = self->roots[cpu * 4 + (vaddr >> 30)];
        int32_t sp1 = sp2 < 0 ? -1 : self->sps[sp2].children[(vaddr >> 21) & 0x1FF];
        if (sp1 >= 0) {
            sp_t *sp = &self->sps[sp1];
            int idx = (int)((vaddr >> 12) & 0x1FF);
            u64 spte = sp->sptes ? sp->sptes[idx] : 0;
            if (spte) {
                sp->sptes[idx] = 0;
                sp->nsptes--;
                rmap_remove(self, spte >> 12, sp1, idx);
                if (self->bypass)
                    set_nonpresent(sp, idx, 0);
            }
        }
    }
}

/* ShadowMachine._load_roots (mmu_free_roots + mmu_alloc_roots) */
static void load_roots(Core *self, int cpu) {
    int32_t *roots = &self->roots[cpu * 4];
    for (int i = 0; i < 4; i++)
        if (roots[i] >= 0)
            self->sps[roots[i]].root_count--;
    u64 cr3 = self->cr3[cpu];
    int32_t fresh[4];
    for (int i = 0; i < 4; i++) {
        int32_t id = -1;
        if (self->pae) {
            u64 pdpte = mem_entry(&self->mem, (cr3 & 0xFFFFFFE0ULL) + 8 * (u64)i, 1);
            if (pdpte & 1)
                id = get_page(self, (pdpte & ADDR_MASK_PAE) >> 12, 2, 0, 0);
        } else {
            id = get_page(self, cr3 >> 12, 2, i, 0);
        }
        if (self->failed)
            return;
        if (id >= 0)
            self->sps[id].root_count++;
        fresh[i] = id;
    }
    memcpy(roots, fresh, sizeof(fresh));
    self->reload[cpu] = 0;
}

static void set_cr3(Core *self, int cpu, u64 value) {
    self->counters[C_exit_cr3]++;
    self->counters[C_tlb_flush]++;
    self->cr3[cpu] = value;
    load_roots(self, cpu);
    if (self->failed)
        return;
    if (self->sync_on_cr3 && self->unsync_pages.n)
        sync_reachable(self, cpu);
    pol_on_cr3(self, cpu);
}

/* ------------------------------------------------------------------ one operation */
static int append_mark(PyObject *marks, i64 phase, const u64 *counters);

/* ShadowMachine.step */
/* ------------------------------------------------------------- tdp (bench/machine/tdp.py) */
/* TdpMachine._levels_read: the guest entries a failing walk read before it faulted */
static int tdp_levels_read(Core *self, int cpu, u64 vaddr) {
    u64 cr3 = self->cr3[cpu], pde_gpa;
    if (self->pae) {
        u64 pdpte = mem_entry(&self->mem, (cr3 & 0xFFFFFFE0ULL) + ((vaddr >> 30) << 3), 1);
        if (!(pdpte & P_BIT))
            return 0; /* the PDPTE register is not present */
        pde_gpa = (pdpte & ADDR_MASK_PAE) + (((vaddr >> 21) & 0x1FF) << 3);
    } else {
        pde_gpa = (cr3 & ADDR_MASK_32) + ((vaddr >> 22) << 2);
    }
    u64 pde = mem_entry(&self->mem, pde_gpa, self->pae);
    if (!(pde & P_BIT) || (pde & PS_BIT) || (vaddr < PAGE_OFFSET && !(pde & US_BIT)))
        return 1;
    return 2;
}

/* TdpMachine._translate: the frame from the TLB or a 2-D walk (EPT_LEVELS = 4); -1 a guest
 * page fault, -2 an error. The OrderedDict's order is the use stamp: a hit moves the entry to
 * the end (a new stamp), a fill past tlb_entries evicts the least recently used. */
static i64 tdp_translate(Core *self, int cpu, u64 vaddr, int write, int user) {
    u64 *c = self->counters, vpn = vaddr >> 12;
    struct tlb_slot *tlb = self->tlb + (size_t)cpu * (size_t)self->tlb_entries, *e = NULL;
    for (i64 i = 0; i < self->tlb_entries; i++)
        if (tlb[i].valid && tlb[i].vpn == vpn) {
            e = &tlb[i];
            break;
        }
    if (e) {
        if ((!user || e->user) && (!write || (e->writable && e->dirty))) {
            e->stamp = ++self->tlb_clock;
            return (i64)e->gfn;
        }
        e->valid = 0; /* re-walk: D to set, or cached permissions forbid the access */
    }
    c[C_tdp_tlb_miss]++;
    walk_t w;
    int r = walk(self, self->cr3[cpu], vaddr, write, user, &w);
    if (r < 0) {
        OOM(self);
        return -2;
    }
    if (!r) {
        int levels = tdp_levels_read(self, cpu, vaddr);
        c[C_tdp_walk_refs] += (u64)levels * 5;
        c[C_native_walk_refs] += (u64)levels;
        return -1;
    }
    int levels = w.pt_gfn < 0 ? 1 : 2;
    c[C_tdp_walk_refs] += (u64)((levels + 1) * 5 - 1);
    c[C_native_walk_refs] += (u64)levels;
    struct tlb_slot *slot = NULL;
    for (i64 i = 0; i < self->tlb_entries && !slot; i++)
        if (!tlb[i].valid)
            slot = &tlb[i];
    if (!slot) { /* full: the least recently used goes */
        slot = &tlb[0];
        for (i64 i = 1; i < self->tlb_entries; i++)
            if (tlb[i].stamp < slot->stamp)
                slot = &tlb[i];
    }
    slot->valid = 1;
    slot->vpn = vpn;
    slot->gfn = w.gfn;
    slot->writable = w.writable;
    slot->user = w.user;
    slot->dirty = w.dirty;
    slot->glob = (w.leaf & 0x100ULL) != 0; /* G */
    slot->stamp = ++self->tlb_clock;
    return (i64)w.gfn;
}

/* TdpMachine.step */
static void tdp_step(Core *self, int kind, int cpu, u64 addr, i64 arg, u64 value) {
    count_native(self, kind, arg);
    struct tlb_slot *tlb = self->tlb + (size_t)cpu * (size_t)self->tlb_entries;
    if (kind <= K_LOAD) {
        int write = kind != K_LOAD;
        i64 gfn = tdp_translate(self, cpu, addr, write, addr < PAGE_OFFSET);
        if (gfn == -1)
            self->counters[C_native_page_fault]++;
        else if (gfn >= 0 && write &&
                 apply_write(self, ((u64)gfn << 12) | (addr & 0xFFF), kind, arg, value) < 0)
            OOM(self);
    } else if (kind == K_INVLPG) {
        for (i64 i = 0; i < self->tlb_entries; i++)
            if (tlb[i].valid && tlb[i].vpn == addr >> 12)
                tlb[i].valid = 0;
    } else if (kind == K_CR3) {
        self->cr3[cpu] = addr;
        for (i64 i = 0; i < self->tlb_entries; i++)
            if (!tlb[i].glob)
                tlb[i].valid = 0;
    } else if (kind == K_MARK) {
        if (append_mark(self->marks, arg, self->counters) < 0)
            self->failed = 1;
    }
}

static void step(Core *self, int kind, int cpu, u64 addr, i64 arg, u64 value, int insn) {
    u64 *c = self->counters;
    if (self->pol.base == B_TDP) {
        tdp_step(self, kind, cpu, addr, arg, value);
        return;
    }
    if (self->batch[cpu] && emulate_extra(self, kind, cpu, addr, arg, value, insn))
        return;
    if (kind <= K_LOAD) {
        int write = kind != K_LOAD;
        if (kind == K_LOAD)
            c[C_native_load]++;
        else if (kind == K_STORE)
            c[C_native_store]++;
        else
            c[C_native_locked_rmw]++;
        int32_t sp2 = self->roots[cpu * 4 + (addr >> 30)];
        if (sp2 >= 0) {
            int i2 = (int)((addr >> 21) & 0x1FF);
            int32_t sp1 = self->sps[sp2].children[i2];
            if (sp1 >= 0) {
                sp_t *sp = &self->sps[sp1];
                int idx = (int)((addr >> 12) & 0x1FF);
                u64 spte = sp->sptes ? sp->sptes[idx] : 0;
                if (spte && (!write || (spte & SPTE_W))) {
                    if (!(spte & SPTE_A))
                        sp->sptes[idx] = spte | SPTE_A;
                    if (write && apply_write(self, ((spte >> 12) << 12) | (addr & 0xFFF), kind,
                                             arg, value) < 0)
                        OOM(self);
                    return;
                }
                if (!spte && self->bypass && notrap(self, sp, idx)) {
                    c[C_pf_bypassed]++;
                    return;
                }
            } else if (self->bypass && notrap(self, &self->sps[sp2], i2)) {
                c[C_pf_bypassed]++;
                return;
            }
        } else if (self->bypass && self->pae && !self->reload[cpu] &&
                   !(mem_entry(&self->mem, (self->cr3[cpu] & 0xFFFFFFE0ULL) + 8 * (addr >> 30),
                               1) & 1)) {
            c[C_pf_bypassed]++;
            return;
        }
        if (write)
            write_fault(self, kind, cpu, addr, arg, value, insn, 0);
        else
            page_fault(self, cpu, addr, 0);
        return;
    }
    count_native(self, kind, arg);
    if (kind == K_INVLPG) {
        invlpg(self, cpu, addr);
    } else if (kind == K_CR3) {
        set_cr3(self, cpu, addr);
    } else if (kind == K_MARK) {
        if (append_mark(self->marks, arg, self->counters) < 0)
            self->failed = 1;
    }
}

/* ------------------------------------------------------------------ Python type */
/* the counters as a tuple in ALL_COUNTERS order; ``exits`` derived from the exit causes, as
 * Counters.as_dict does */
static PyObject *counts_tuple(const u64 *counters) {
    PyObject *t = PyTuple_New(NCOUNTERS);
    if (!t)
        return NULL;
    u64 exits = 0;
    for (int i = C_exit_ptwrite_emulate; i <= C_exit_cr3; i++)
        exits += counters[i];
    for (int i = 0; i < NCOUNTERS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(i == C_exits ? exits : counters[i]);
        if (!v) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

static PyObject *counters_tuple(Core *self) { return counts_tuple(self->counters); }

/* a MARK: (phase, counters) appended to ``marks``; -1 on error */
static int append_mark(PyObject *marks, i64 phase, const u64 *counters) {
    PyObject *snap = counts_tuple(counters);
    PyObject *mark = snap ? Py_BuildValue("(LN)", (long long)phase, snap) : NULL;
    int r = (!mark || PyList_Append(marks, mark) < 0) ? -1 : 0;
    Py_XDECREF(mark);
    return r;
}

static void release_reads(Core *self) {
    if (self->have_reads) {
        for (int i = 0; i < 5; i++)
            PyBuffer_Release(&self->rb[i]);
        self->have_reads = 0;
    }
}

static void Core_dealloc(Core *self) {
    release_reads(self);
    mem_free(&self->mem);
    for (size_t i = 0; i < self->nsp; i++) {
        free(self->sps[i].sptes);
        free(self->sps[i].children);
        free(self->sps[i].parents.v);
    }
    free(self->sps);
    map_free(&self->pages);
    vecmap_free(&self->by_gfn);
    vecmap_free(&self->rmap);
    free(self->unsync_pages.v);
    free(self->cr3);
    free(self->roots);
    free(self->batch);
    free(self->reload);
    if (self->cs) {
        for (int i = 0; i < self->cpus; i++)
            free(self->cs[i].oos);
        free(self->cs);
    }
    map_free(&self->ski_writes);
    map_free(&self->ski_threshold);
    vecmap_free(&self->ski_spec);
    vecmap_free(&self->oracle_plan);
    map_free(&self->oracle_next);
    map_free(&self->oracle_count);
    free(self->insn_btr);
    free(self->tlb);
    free(self->pol.drawn);
    Py_XDECREF(self->pol.draw);
    Py_XDECREF(self->marks);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int get_int(PyObject *dict, const char *key, long long *out, int required) {
    PyObject *v = PyDict_GetItemString(dict, key); /* borrowed */
    if (!v) {
        if (required) {
            PyErr_Format(PyExc_KeyError, "native core: missing %s", key);
            return -1;
        }
        return 0;
    }
    *out = PyLong_AsLongLong(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 1;
}

/* Core(tables: dict[int, array('I')], words: dict[int, int], pae: bool, cr3s: list[int],
 *      config: dict[str, int], policy: dict[str, object], insn_btr: bytes) */
static int Core_init(Core *self, PyObject *args, PyObject *kwds) {
    PyObject *tables, *words, *cr3s, *config, *policy;
    int pae;
    Py_buffer insn;
    if (!PyArg_ParseTuple(args, "O!O!pO!O!O!y*", &PyDict_Type, &tables, &PyDict_Type, &words,
                          &pae, &PyList_Type, &cr3s, &PyDict_Type, &config, &PyDict_Type,
                          &policy, &insn))
        return -1;
    if (self->marks) {
        PyBuffer_Release(&insn);
        PyErr_SetString(PyExc_TypeError, "native core: Core is initialised once");
        return -1;
    }
    self->ninsn = insn.len;
    self->insn_btr = malloc(insn.len ? insn.len : 1);
    if (!self->insn_btr) {
        PyBuffer_Release(&insn);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(self->insn_btr, insn.buf, insn.len);
    PyBuffer_Release(&insn);
    self->pae = pae;
    self->esize = pae ? 8 : 4;
    self->marks = PyList_New(0);
    if (!self->marks)
        return -1;
    /* guest memory */
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(tables, &pos, &key, &value)) {
        u64 gfn = PyLong_AsUnsignedLongLong(key);
        if (PyErr_Occurred())
            return -1;
        Py_buffer b;
        if (PyObject_GetBuffer(value, &b, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
            return -1;
        if (b.itemsize != 4 || b.len != 4096) {
            PyBuffer_Release(&b);
            PyErr_SetString(PyExc_ValueError, "native core: a table page is not 1024 u32 words");
            return -1;
        }
        u32 *page = malloc(4096);
        u64 *slot = page ? map_ref(&self->mem.tables, gfn) : NULL;
        if (!slot) {
            free(page);
            PyBuffer_Release(&b);
            PyErr_NoMemory();
            return -1;
        }
        memcpy(page, b.buf, 4096);
        PyBuffer_Release(&b);
        *slot = (u64)(uintptr_t)page;
    }
    pos = 0;
    while (PyDict_Next(words, &pos, &key, &value)) {
        u64 w = PyLong_AsUnsignedLongLong(key);
        u64 v = PyLong_AsUnsignedLongLong(value);
        if (PyErr_Occurred())
            return -1;
        if (v > 0xFFFFFFFFULL) {
            PyErr_SetString(PyExc_ValueError, "native core: a memory word over 32 bits");
            return -1;
        }
        if (map_get(&self->mem.tables, w >> 10)) {
            PyErr_SetString(PyExc_ValueError, "native core: a sparse word inside a table page");
            return -1;
        }
        u64 *slot = map_ref(&self->mem.words, w);
        if (!slot) {
            PyErr_NoMemory();
            return -1;
        }
        *slot = v + 1;
    }
    /* vCPUs */
    Py_ssize_t cpus = PyList_GET_SIZE(cr3s);
    if (cpus < 1 || cpus > 4096) {
        PyErr_SetString(PyExc_ValueError, "native core: 1 to 4096 vCPUs");
        return -1;
    }
    self->cpus = (int)cpus;
    self->cr3 = calloc(cpus, sizeof(u64));
    self->roots = malloc(cpus * 4 * sizeof(int32_t));
    self->batch = calloc(cpus, sizeof(i64));
    self->reload = calloc(cpus, sizeof(int));
    self->cs = calloc(cpus, sizeof(cpu_state_t));
    if (!self->cr3 || !self->roots || !self->batch || !self->reload || !self->cs) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < cpus; i++) {
        self->cr3[i] = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(cr3s, i));
        if (PyErr_Occurred())
            return -1;
        for (int r = 0; r < 4; r++)
            self->roots[i * 4 + r] = -1;
    }
    /* MMUConfig */
    struct { const char *name; int *field; } flags[] = {
        {"update_spte_on_write", &self->update_spte},
        {"dirty_bit_pte_write", &self->dirty_bit_pte_write},
        {"quadrant_filter", &self->quadrant_filter},
        {"user_fault_unshadow", &self->user_fault_unshadow},
        {"user_write_unshadow", &self->user_write_unshadow},
        {"bypass_guest_pf", &self->bypass},
        {"intercept_invlpg", &self->intercept_invlpg},
        {"invlpg_drops_spte", &self->invlpg_drops_spte},
        {"sync_on_cr3", &self->sync_on_cr3},
        {"sync_zaps_empty", &self->sync_zaps_empty},
    };
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        long long v;
        if (get_int(config, flags[i].name, &v, 1) < 0)
            return -1;
        *flags[i].field = v != 0;
    }
    /* the policy */
    policy_t *p = &self->pol;
    long long v;
    struct { const char *name; int required; } known[] = {
        {"base", 1}, {"accessed_clear", 0}, {"batch", 0}, {"batch_extra", 0},
        {"batch_pae_only", 0}, {"v20", 0}, {"v27", 0}, {"threshold", 0}, {"include_leaf", 0},
        {"keep_on_unaligned_zero", 0}, {"oos_limit", 0}, {"ski_threshold", 0},
        {"oracle_native", 0}, {"tlb_entries", 0},
    };
    long long vals[sizeof(known) / sizeof(known[0])];
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        vals[i] = 0;
        if (get_int(policy, known[i].name, &v, known[i].required) < 0)
            return -1;
        if (PyDict_GetItemString(policy, known[i].name))
            vals[i] = v;
    }
    p->base = (int)vals[0];
    p->accessed_clear = (int)vals[1];
    p->batch = (int)vals[2];
    p->batch_extra = (int)vals[3];
    p->batch_pae_only = (int)vals[4];
    p->v20 = (int)vals[5];
    p->v27 = (int)vals[6];
    p->threshold = vals[7];
    p->include_leaf = (int)vals[8];
    p->keep_on_unaligned_zero = (int)vals[9];
    p->oos_limit = (int)vals[10];
    p->ski_threshold = vals[11];
    p->oracle_native = (int)vals[12];
    self->tlb_entries = vals[13];
    if (p->base < B_EMULATE || p->base > B_TDP) {
        PyErr_SetString(PyExc_ValueError, "native core: unknown policy base");
        return -1;
    }
    if (p->base == B_XEN_OOS && p->oos_limit < 1) {
        PyErr_SetString(PyExc_ValueError, "native core: xen-oos needs oos_limit >= 1");
        return -1;
    }
    if (p->base == B_TDP) {
        if (self->tlb_entries < 1 || self->tlb_entries > (1 << 20)) {
            PyErr_SetString(PyExc_ValueError, "native core: tdp needs 1 to 2**20 tlb_entries");
            return -1;
        }
        self->tlb = calloc((size_t)self->cpus * (size_t)self->tlb_entries, sizeof(*self->tlb));
        if (!self->tlb) {
            PyErr_NoMemory();
            return -1;
        }
    }
    PyObject *draw = PyDict_GetItemString(policy, "draw");
    if (draw && draw != Py_None) {
        Py_INCREF(draw);
        p->draw = draw;
    }
    for (int i = 0; i < self->cpus; i++) {
        cpu_state_t *s = &self->cs[i];
        s->last_pte = -1;
        s->xen_last = -1;
        if (p->base == B_XEN_OOS) {
            s->oos = malloc(p->oos_limit * sizeof(i64));
            if (!s->oos) {
                PyErr_NoMemory();
                return -1;
            }
            for (int k = 0; k < p->oos_limit; k++)
                s->oos[k] = -1;
        }
    }
    self->ski_written_gfn = -1;
    self->oracle_zap_gfn = -1;
    PyObject *plan = PyDict_GetItemString(policy, "plan"); /* {gfn: [(writes, unshadow), ...]} */
    if (plan && plan != Py_None) {
        if (!PyDict_Check(plan)) {
            PyErr_SetString(PyExc_TypeError, "native core: plan must be a dict");
            return -1;
        }
        pos = 0;
        while (PyDict_Next(plan, &pos, &key, &value)) {
            u64 gfn = PyLong_AsUnsignedLongLong(key);
            if (PyErr_Occurred())
                return -1;
            vec_t *vv = vecmap_ref(&self->oracle_plan, gfn);
            if (!vv) {
                PyErr_NoMemory();
                return -1;
            }
            Py_ssize_t n = PySequence_Length(value);
            if (n < 0)
                return -1;
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *item = PySequence_GetItem(value, i);
                long long writes = 0;
                int unshadow = 0;
                if (!item || !PyArg_ParseTuple(item, "Lp", &writes, &unshadow)) {
                    Py_XDECREF(item);
                    return -1;
                }
                Py_DECREF(item);
                if (vec_push(vv, ((u64)writes << 1) | (u64)unshadow) < 0) {
                    PyErr_NoMemory();
                    return -1;
                }
            }
        }
    }
    /* the vCPUs' roots (ShadowMachine.__init__; tdp has none) */
    for (int cpu = 0; cpu < self->cpus && p->base != B_TDP; cpu++) {
        load_roots(self, cpu);
        if (self->failed) {
            if (!PyErr_Occurred())
                PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

static int get_column(PyObject *obj, Py_buffer *b, Py_ssize_t itemsize, char code,
                      const char *what) {
    if (PyObject_GetBuffer(obj, b, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (b->itemsize != itemsize || !b->format || b->format[0] != code || b->format[1]) {
        PyBuffer_Release(b);
        PyErr_Format(PyExc_TypeError, "native core: column %s must be array('%c')", what, code);
        return -1;
    }
    return 0;
}

/* feed_reads(ats, methods, gpas, args, values) or feed_reads(None): the next chunk of recorded
 * reads (arrays of the types of bench.recording.READ_FIELDS), or none left */
static PyObject *Core_feed_reads(Core *self, PyObject *args) {
    release_reads(self);
    self->rj = self->rn = 0;
    if (PyTuple_GET_SIZE(args) == 1 && PyTuple_GET_ITEM(args, 0) == Py_None)
        Py_RETURN_NONE;
    PyObject *cols[5];
    if (!PyArg_UnpackTuple(args, "feed_reads", 5, 5, &cols[0], &cols[1], &cols[2], &cols[3],
                           &cols[4]))
        return NULL;
    static const char codes[5] = {'Q', 'B', 'Q', 'B', 'Q'};
    static const Py_ssize_t sizes[5] = {8, 1, 8, 1, 8};
    static const char *names[5] = {"at", "method", "gpa", "arg", "value"};
    for (int i = 0; i < 5; i++) {
        if (get_column(cols[i], &self->rb[i], sizes[i], codes[i], names[i]) < 0) {
            for (int k = 0; k < i; k++)
                PyBuffer_Release(&self->rb[k]);
            return NULL;
        }
    }
    self->have_reads = 1;
    self->rn = self->rb[0].len / 8;
    for (int i = 1; i < 5; i++) {
        if (self->rb[i].len / sizes[i] != self->rn) {
            release_reads(self);
            PyErr_SetString(PyExc_ValueError, "native core: read columns of unequal length");
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* Repeat the reads recorded at the current point (bench.recording._ReadCursor.agrees):
 * 0 all agree, 1 the chunk ran out (feed the next), 2 a read differs. */
static int check_reads(Core *self) {
    const u64 *ats = self->rb[0].buf, *gpas = self->rb[2].buf, *values = self->rb[4].buf;
    const unsigned char *methods = self->rb[1].buf, *rargs = self->rb[3].buf;
    while (self->have_reads) {
        if (self->rj >= self->rn)
            return 1;
        if ((i64)ats[self->rj] != self->done)
            return 0;
        Py_ssize_t j = self->rj;
        u64 got;
        if (methods[j] == 0)
            got = mem_word(&self->mem, gpas[j]);
        else if (methods[j] == 1)
            got = mem_entry(&self->mem, gpas[j], rargs[j] != 0);
        else
            got = mem_read(&self->mem, gpas[j], rargs[j]);
        self->rj++;
        if (got != values[j])
            return 2;
    }
    return 0;
}

/* run_ops(kinds, cpus, addrs, args, values, insns) -> 0 chunk done, 1 feed the next reads chunk
 * and call again with the same chunk, 2 a read differs (the replay is off) */
static PyObject *Core_run_ops(Core *self, PyObject *args) {
    PyObject *cols[6];
    if (!PyArg_UnpackTuple(args, "run_ops", 6, 6, &cols[0], &cols[1], &cols[2], &cols[3],
                           &cols[4], &cols[5]))
        return NULL;
    if (self->failed) {
        PyErr_SetString(PyExc_RuntimeError, "native core: the run already failed");
        return NULL;
    }
    static const char codes[6] = {'B', 'H', 'Q', 'q', 'Q', 'H'};
    static const Py_ssize_t sizes[6] = {1, 2, 8, 8, 8, 2};
    static const char *names[6] = {"kind", "cpu", "addr", "arg", "value", "insn"};
    Py_buffer b[6];
    for (int i = 0; i < 6; i++) {
        if (get_column(cols[i], &b[i], sizes[i], codes[i], names[i]) < 0) {
            for (int k = 0; k < i; k++)
                PyBuffer_Release(&b[k]);
            return NULL;
        }
    }
    Py_ssize_t n = b[0].len;
    int status = 0;
    for (int i = 1; i < 6; i++)
        if (b[i].len / sizes[i] != n)
            status = -1;
    if (status < 0) {
        for (int i = 0; i < 6; i++)
            PyBuffer_Release(&b[i]);
        PyErr_SetString(PyExc_ValueError, "native core: op columns of unequal length");
        return NULL;
    }
    const unsigned char *kinds = b[0].buf;
    const uint16_t *cpus = b[1].buf, *insns = b[5].buf;
    const u64 *addrs = b[2].buf, *values = b[4].buf;
    const i64 *oargs = b[3].buf;
    while (self->op_pos < n) {
        Py_ssize_t i = self->op_pos;
        status = check_reads(self);
        if (status)
            break;
        if (cpus[i] >= self->cpus) {
            self->failed = 1;
            PyErr_Format(BenchError, "operation on cpu %d, but the guest has cpus 0..%d",
                         (int)cpus[i], self->cpus - 1);
            break;
        }
        step(self, kinds[i], cpus[i], addrs[i], oargs[i], values[i], insns[i]);
        if (self->failed)
            break;
        self->done++;
        self->op_pos++;
    }
    for (int i = 0; i < 6; i++)
        PyBuffer_Release(&b[i]);
    if (self->failed) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return NULL;
    }
    if (status == 0)
        self->op_pos = 0;
    return PyLong_FromLong(status);
}

/* finish_reads() -> 0, 1 or 2: the reads after the last operation (as run_ops) */
static PyObject *Core_finish_reads(Core *self, PyObject *unused) {
    return PyLong_FromLong(check_reads(self));
}

/* GuestMemory.read32 / read_entry on this core's memory, for a ScanStream generating the
 * policy's own stream (bench/core/_scan.c) */
static int core_stream_read(void *ctx, int method, u64 gpa, int pae, u64 *value) {
    Core *self = ctx;
    *value = method == 0 ? mem_word(&self->mem, gpa) : mem_entry(&self->mem, gpa, pae);
    return 0;
}

/* run_stream(stream): run a ScanStream's operations to its end on this core, the stream
 * reading this core's guest memory (the policy's guest generating its own stream, bench.cell);
 * build the core with insn_btr b"\0\1": instruction 1 is btr. Returns the operations run. */
static PyObject *Core_run_stream(Core *self, PyObject *stream) {
    if (!scan_stream_check(stream)) {
        PyErr_SetString(PyExc_TypeError, "run_stream: not a ScanStream");
        return NULL;
    }
    if (self->failed || self->ninsn < 2) {
        PyErr_SetString(PyExc_RuntimeError, "run_stream: a failed core, or no btr instruction");
        return NULL;
    }
    scan_stream_attach(stream, core_stream_read, self, 0);
    int got;
    for (;;) {
        int kind, cpu;
        u64 addr, value;
        i64 arg;
        PyObject *insn;
        got = scan_stream_pull(stream, self->done, &kind, &cpu, &addr, &arg, &value, &insn);
        if (got <= 0)
            break;
        if (cpu >= self->cpus) {
            self->failed = 1;
            PyErr_Format(BenchError, "operation on cpu %d, but the guest has cpus 0..%d", cpu,
                         self->cpus - 1);
            break;
        }
        step(self, kind, cpu, addr, arg, value, scan_stream_is_btr(stream, insn));
        if (self->failed) {
            if (!PyErr_Occurred())
                PyErr_NoMemory();
            break;
        }
        self->done++;
    }
    scan_stream_attach(stream, NULL, NULL, 0);
    if (got < 0 || self->failed)
        return NULL;
    return PyLong_FromLongLong(self->done);
}

static PyObject *Core_counters(Core *self, PyObject *unused) { return counters_tuple(self); }

static PyObject *Core_marks(Core *self, PyObject *unused) {
    Py_INCREF(self->marks);
    return self->marks;
}

static PyObject *Core_done(Core *self, PyObject *unused) {
    return PyLong_FromLongLong(self->done);
}

/* image() -> {word address: value} of every non-zero word (GuestMemory.image) */
static PyObject *Core_image(Core *self, PyObject *unused) {
    PyObject *out = PyDict_New();
    if (!out)
        return NULL;
    map_t *words = &self->mem.words;
    for (size_t i = 0; i < words->cap; i++) {
        if (words->keys[i] && words->vals[i] > 1) {
            PyObject *k = PyLong_FromUnsignedLongLong(words->keys[i] - 1);
            PyObject *v = PyLong_FromUnsignedLongLong(words->vals[i] - 1);
            if (!k || !v || PyDict_SetItem(out, k, v) < 0) {
                Py_XDECREF(k);
                Py_XDECREF(v);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(k);
            Py_DECREF(v);
        }
    }
    map_t *tables = &self->mem.tables;
    for (size_t i = 0; i < tables->cap; i++) {
        if (!tables->keys[i])
            continue;
        u64 base = (tables->keys[i] - 1) << 10;
        const u32 *page = (const u32 *)(uintptr_t)tables->vals[i];
        for (int j = 0; j < 1024; j++) {
            if (!page[j])
                continue;
            PyObject *k = PyLong_FromUnsignedLongLong(base + j);
            PyObject *v = PyLong_FromUnsignedLong(page[j]);
            if (!k || !v || PyDict_SetItem(out, k, v) < 0) {
                Py_XDECREF(k);
                Py_XDECREF(v);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(k);
            Py_DECREF(v);
        }
    }
    return out;
}

static PyMethodDef Core_methods[] = {
    {"feed_reads", (PyCFunction)Core_feed_reads, METH_VARARGS,
     "feed_reads(ats, methods, gpas, args, values) or feed_reads(None)"},
    {"run_ops", (PyCFunction)Core_run_ops, METH_VARARGS,
     "run_ops(kinds, cpus, addrs, args, values, insns) -> 0 done, 1 feed reads, 2 read differs"},
    {"run_stream", (PyCFunction)Core_run_stream, METH_O,
     "run_stream(scan_stream) -> operations run: the policy's guest generating its own stream"},
    {"finish_reads", (PyCFunction)Core_finish_reads, METH_NOARGS,
     "check the reads after the last operation -> 0, 1 or 2"},
    {"counters", (PyCFunction)Core_counters, METH_NOARGS,
     "the counters, in ALL_COUNTERS order (exits derived)"},
    {"marks", (PyCFunction)Core_marks, METH_NOARGS, "[(phase, counters tuple)] at each MARK"},
    {"done", (PyCFunction)Core_done, METH_NOARGS, "operations executed"},
    {"image", (PyCFunction)Core_image, METH_NOARGS, "guest memory's non-zero words"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bench.core._core.Core",
    .tp_doc = "The shadow MMU with a built-in policy, replaying a recorded guest run.",
    .tp_basicsize = sizeof(Core),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
};

/* ================================================================== the native executor */
/* bench.machine.native.NativeMachine and bench.oracle.Recorder, on the Python GuestMemory's own
 * dictionaries (tables: gfn -> array('I'); words: word address -> int), because the workload
 * reads and writes the same memory between operations (a recording's tee runs the generator).
 * One operation at a time: step(kind, cpu, addr, arg, value). With ``trace`` the oracle's
 * record is kept (Recorder's _walked/_written/_loaded_cr3) and finish() returns its parts. */

typedef struct {
    int burst, cold;
    i64 writes, extra;
    u64 seen[16], touched[16], cleared[16]; /* 1024 pte indexes */
    PyObject *intervals; /* list of (writes, extra, rebuilt), or NULL: none yet */
} rtable_t;

typedef struct {
    PyObject_HEAD
    PyObject *mem_tables; /* the GuestMemory's dicts (borrowed semantics, held) */
    PyObject *mem_words;
    int pae, esize, cpus, trace_on;
    u64 *cr3;
    u64 counters[NCOUNTERS];
    PyObject *marks;
    /* the Recorder */
    i64 creates, faults, violations;
    map_t rtab_index; /* gfn -> index + 1 into rtabs */
    rtable_t *rtabs;
    size_t nrtabs, caprtabs;
    PyObject *rtab_order; /* gfns in first-use order (Python list) */
    map_t directories, roots, direct_pages, direct_frames; /* sets: value 1 */
    int failed;
    /* table pages looked up in mem_tables and exported (direct-mapped by gfn); valid while no
     * Python code runs (page_cache_clear before handing control to Python, and on every entry) */
    struct {
        u64 gfn;
        u32 *words;
        Py_buffer view;
    } pcache[64];
    int pcache_used[64], npcache;
} Native;

#define PCACHE_SLOTS 64

static void page_cache_clear(Native *self) {
    for (int i = 0; i < self->npcache; i++) {
        int k = self->pcache_used[i];
        self->pcache[k].words = NULL;
        PyBuffer_Release(&self->pcache[k].view);
    }
    self->npcache = 0;
}

/* the array('I') page of gfn in the GuestMemory, or NULL; *view must be released */
static u32 *py_table_lookup(Native *self, u64 gfn, Py_buffer *view, int *err) {
    PyObject *key = PyLong_FromUnsignedLongLong(gfn);
    if (!key) {
        *err = 1;
        return NULL;
    }
    PyObject *page = PyDict_GetItemWithError(self->mem_tables, key); /* borrowed */
    Py_DECREF(key);
    if (!page) {
        if (PyErr_Occurred())
            *err = 1;
        return NULL;
    }
    if (PyObject_GetBuffer(page, view, PyBUF_WRITABLE) < 0 || view->len != 4096) {
        if (!PyErr_Occurred()) {
            PyBuffer_Release(view);
            PyErr_SetString(PyExc_ValueError, "native executor: a table page is not 1024 words");
        }
        *err = 1;
        return NULL;
    }
    return view->buf;
}

/* the 1024 words of table page ``gfn`` (NULL: not a table page; *err on an error), through
 * the page cache (a page found stays exported until page_cache_clear) */
static u32 *py_table(Native *self, u64 gfn, int *err) {
    int k = (int)(gfn % PCACHE_SLOTS);
    if (self->pcache[k].words && self->pcache[k].gfn == gfn)
        return self->pcache[k].words;
    Py_buffer view;
    u32 *words = py_table_lookup(self, gfn, &view, err);
    if (!words)
        return NULL;
    if (self->pcache[k].words) {
        PyBuffer_Release(&self->pcache[k].view);
    } else {
        self->pcache_used[self->npcache++] = k;
    }
    self->pcache[k].gfn = gfn;
    self->pcache[k].words = words;
    self->pcache[k].view = view;
    return words;
}

/* GuestMemory._word */
static u32 py_word(Native *self, u64 gpa) {
    int err = 0;
    u32 *page = py_table(self, gpa >> 12, &err);
    if (err) {
        self->failed = 1;
        return 0;
    }
    if (page)
        return page[(gpa & 0xFFF) >> 2];
    PyObject *key = PyLong_FromUnsignedLongLong(gpa >> 2);
    if (!key) {
        self->failed = 1;
        return 0;
    }
    PyObject *v = PyDict_GetItemWithError(self->mem_words, key);
    Py_DECREF(key);
    if (!v) {
        if (PyErr_Occurred())
            self->failed = 1;
        return 0;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (PyErr_Occurred())
        self->failed = 1;
    return (u32)x;
}

/* GuestMemory.write32 */
static void py_write32(Native *self, u64 gpa, u32 value) {
    int err = 0;
    u32 *page = py_table(self, gpa >> 12, &err);
    if (err) {
        self->failed = 1;
        return;
    }
    if (page) {
        page[(gpa & 0xFFF) >> 2] = value;
        return;
    }
    PyObject *key = PyLong_FromUnsignedLongLong(gpa >> 2);
    if (!key) {
        self->failed = 1;
        return;
    }
    if (value) {
        PyObject *v = PyLong_FromUnsignedLong(value);
        if (!v || PyDict_SetItem(self->mem_words, key, v) < 0)
            self->failed = 1;
        Py_XDECREF(v);
    } else if (PyDict_DelItem(self->mem_words, key) < 0) {
        if (PyErr_ExceptionMatches(PyExc_KeyError))
            PyErr_Clear();
        else
            self->failed = 1;
    }
    Py_DECREF(key);
}

static u64 py_entry(Native *self, u64 gpa, int pae) {
    if (pae)
        return (u64)py_word(self, gpa) | ((u64)py_word(self, gpa + 4) << 32);
    return py_word(self, gpa);
}

static u32 py_word_fn(void *self, u64 gpa) { return py_word(self, gpa); }

static int py_write32_fn(void *self, u64 gpa, u32 value) {
    py_write32(self, gpa, value);
    return ((Native *)self)->failed ? -1 : 0;
}

static inline int set_has(const map_t *m, u64 key) { return map_get(m, key) != 0; }

static int set_add(Native *self, map_t *m, u64 key) {
    u64 *slot = map_ref(m, key);
    if (!slot) {
        self->failed = 1;
        PyErr_NoMemory();
        return -1;
    }
    *slot = 1;
    return 0;
}

static int py_has_table(Native *self, u64 gfn) {
    PyObject *key = PyLong_FromUnsignedLongLong(gfn);
    if (!key) {
        self->failed = 1;
        return 0;
    }
    int r = PyDict_Contains(self->mem_tables, key);
    Py_DECREF(key);
    if (r < 0) {
        self->failed = 1;
        return 0;
    }
    return r;
}

static rtable_t *rtable_get(Native *self, u64 gfn) {
    u64 i = map_get(&self->rtab_index, gfn);
    return i ? &self->rtabs[i - 1] : NULL;
}

/* Recorder._protectable */
static int protectable(Native *self, u64 gfn) {
    return py_has_table(self, gfn) || rtable_get(self, gfn) || set_has(&self->directories, gfn);
}

/* append Interval(writes, extra, rebuilt) to the table's list */
static void rtable_interval(Native *self, u64 gfn, rtable_t *t, i64 writes, i64 extra,
                            int rebuilt) {
    if (!t->intervals) {
        t->intervals = PyList_New(0);
        if (!t->intervals) {
            self->failed = 1;
            return;
        }
    }
    PyObject *iv = Py_BuildValue("(LLO)", (long long)writes, (long long)extra,
                                 rebuilt ? Py_True : Py_False);
    if (!iv || PyList_Append(t->intervals, iv) < 0)
        self->failed = 1;
    Py_XDECREF(iv);
}

/* Recorder._note_roots */
static void note_roots(Native *self, u64 cr3) {
    u64 keys[4];
    int n = 0;
    if (self->pae) {
        for (int i = 0; i < 4; i++) {
            u64 pdpte = py_entry(self, (cr3 & 0xFFFFFFE0ULL) + 8 * (u64)i, 1);
            if (pdpte & 1)
                keys[n++] = ((pdpte & ADDR_MASK_PAE) >> 12) << 2;
        }
    } else {
        for (int q = 0; q < 4; q++)
            keys[n++] = ((cr3 >> 12) << 2) | (u64)q;
    }
    for (int i = 0; i < n && !self->failed; i++) {
        u64 gfn = keys[i] >> 2;
        set_add(self, &self->directories, gfn);
        if (rtable_get(self, gfn))
            self->violations++;
        if (!set_has(&self->roots, keys[i])) {
            set_add(self, &self->roots, keys[i]);
            self->creates++;
        }
    }
}

/* Recorder._walked */
static void walked(Native *self, const walk_t *w, int write, int user) {
    if (rtable_get(self, w->pd_gfn))
        self->violations++;
    if (set_add(self, &self->directories, w->pd_gfn) < 0)
        return;
    rtable_t *t = NULL;
    if (w->pt_gfn >= 0) {
        u64 gfn = (u64)w->pt_gfn;
        t = rtable_get(self, gfn);
        if (!t) {
            if (set_has(&self->directories, gfn))
                self->violations++;
            if (self->nrtabs == self->caprtabs) {
                size_t cap = self->caprtabs ? self->caprtabs * 2 : 256;
                rtable_t *r = realloc(self->rtabs, cap * sizeof(rtable_t));
                if (!r) {
                    self->failed = 1;
                    PyErr_NoMemory();
                    return;
                }
                self->rtabs = r;
                self->caprtabs = cap;
            }
            t = &self->rtabs[self->nrtabs];
            memset(t, 0, sizeof(*t));
            t->burst = t->cold = 1;
            u64 *slot = map_ref(&self->rtab_index, gfn);
            PyObject *g = PyLong_FromUnsignedLongLong(gfn);
            if (!slot || !g || PyList_Append(self->rtab_order, g) < 0) {
                Py_XDECREF(g);
                self->failed = 1;
                if (!PyErr_Occurred())
                    PyErr_NoMemory();
                return;
            }
            Py_DECREF(g);
            *slot = ++self->nrtabs;
            self->creates++;
        }
    }
    int prot = protectable(self, w->gfn);
    if (user && prot)
        self->violations++;
    int eligible = !(write && prot);
    if (!t) {
        u64 region = w->gfn >> 9;
        if (!set_has(&self->direct_pages, region)) {
            set_add(self, &self->direct_pages, region);
            self->creates++;
        }
        if (!set_has(&self->direct_frames, w->gfn)) {
            set_add(self, &self->direct_frames, w->gfn);
            if (eligible)
                self->faults++;
        }
        return;
    }
    if (!t->burst) {
        t->burst = 1;
        t->cold = 0;
        memset(t->seen, 0, sizeof(t->seen));
        t->extra = 0;
    }
    int index = (int)((w->leaf_gpa & 0xFFF) / (u64)self->esize);
    if (!bit_get(t->seen, index)) {
        bit_set(t->seen, index);
        if (eligible) {
            if (t->cold || bit_get(t->cleared, index) || !bit_get(t->touched, index))
                self->faults++;
            else
                t->extra++;
        }
        bit_set(t->touched, index);
        bit_clear(t->cleared, index);
    }
}

/* Recorder._written */
static void written(Native *self, u64 gpa) {
    u64 gfn = gpa >> 12;
    rtable_t *t = rtable_get(self, gfn);
    if (!t)
        return;
    if (t->burst) {
        if (!t->cold)
            rtable_interval(self, gfn, t, t->writes, t->extra, 1);
        t->burst = 0;
        t->writes = 0;
    }
    t->writes++;
    u64 gpte = py_entry(self, gpa & ~(u64)(self->esize - 1), self->pae);
    int index = (int)((gpa & 0xFFF) / (u64)self->esize);
    bit_set(t->touched, index);
    if ((gpte & 0x21) != 0x21)
        bit_set(t->cleared, index);
    else
        bit_clear(t->cleared, index);
}

/* NativeMachine.step */
static void native_step(Native *self, int kind, int cpu, u64 addr, i64 arg, u64 value) {
    u64 *c = self->counters;
    count_native_in(c, kind, arg);
    if (kind <= K_LOAD) {
        int write = kind != K_LOAD;
        int user = addr < PAGE_OFFSET;
        walk_t w;
        int ok = walk_generic(self, py_word_fn, py_write32_fn, self->pae, self->cr3[cpu], addr,
                              write, user, &w);
        if (self->failed || ok < 0) {
            self->failed = 1;
            return;
        }
        if (!ok) {
            c[C_native_page_fault]++;
            return;
        }
        if (self->trace_on)
            walked(self, &w, write, user);
        if (write) {
            u64 gpa = (w.gfn << 12) | (addr & 0xFFF);
            if (apply_write_generic(self, py_word_fn, py_write32_fn, gpa, kind, arg, value) < 0)
                self->failed = 1;
            if (self->trace_on && !self->failed)
                written(self, gpa);
        }
    } else if (kind == K_CR3) {
        self->cr3[cpu] = addr;
        if (self->trace_on)
            note_roots(self, addr);
    } else if (kind == K_MARK) {
        if (append_mark(self->marks, arg, self->counters) < 0)
            self->failed = 1;
    }
}

/* Native(mem_tables, mem_words, pae, cr3s, trace) */
static int Native_init(Native *self, PyObject *args, PyObject *kwds) {
    PyObject *tables, *words, *cr3s;
    int pae, trace_on;
    if (!PyArg_ParseTuple(args, "O!O!pO!p", &PyDict_Type, &tables, &PyDict_Type, &words, &pae,
                          &PyList_Type, &cr3s, &trace_on))
        return -1;
    if (self->marks) {
        PyErr_SetString(PyExc_TypeError, "native executor: initialised once");
        return -1;
    }
    Py_INCREF(tables);
    self->mem_tables = tables;
    Py_INCREF(words);
    self->mem_words = words;
    self->pae = pae;
    self->esize = pae ? 8 : 4;
    self->trace_on = trace_on;
    self->marks = PyList_New(0);
    self->rtab_order = PyList_New(0);
    if (!self->marks || !self->rtab_order)
        return -1;
    Py_ssize_t cpus = PyList_GET_SIZE(cr3s);
    if (cpus < 1 || cpus > 4096) {
        PyErr_SetString(PyExc_ValueError, "native executor: 1 to 4096 vCPUs");
        return -1;
    }
    self->cpus = (int)cpus;
    self->cr3 = calloc(cpus, sizeof(u64));
    if (!self->cr3) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < cpus; i++) {
        self->cr3[i] = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(cr3s, i));
        if (PyErr_Occurred())
            return -1;
    }
    if (trace_on)
        for (Py_ssize_t i = 0; i < cpus && !self->failed; i++)
            note_roots(self, self->cr3[i]);
    if (self->failed) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* run(ops) -> None: every operation of the iterable, as NativeMachine.run */
static PyObject *Native_run_ops(Native *self, PyObject *iterable) {
    PyObject *it = PyObject_GetIter(iterable);
    if (!it)
        return NULL;
    PyObject *op;
    while ((op = PyIter_Next(it))) {
        page_cache_clear(self); /* the generator ran: its memory may have changed */
        PyObject *items[5];
        int bad = 0;
        if (PyTuple_Check(op) && PyTuple_GET_SIZE(op) >= 5) {
            for (int i = 0; i < 5; i++)
                items[i] = PyTuple_GET_ITEM(op, i);
        } else {
            bad = 1;
        }
        long long kind = 0, cpu = 0, arg = 0;
        unsigned long long addr = 0, value = 0;
        if (!bad) {
            kind = PyLong_AsLongLong(items[0]);
            cpu = PyLong_AsLongLong(items[1]);
            addr = PyLong_AsUnsignedLongLong(items[2]);
            arg = PyLong_AsLongLong(items[3]);
            value = PyLong_AsUnsignedLongLong(items[4]);
            if (PyErr_Occurred())
                bad = 1;
        }
        Py_DECREF(op);
        if (bad || kind < 0 || kind > K_MARK || cpu < 0 || cpu >= self->cpus) {
            /* not an operation this executor knows: the Python executor's error, there */
            Py_DECREF(it);
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "native executor: operation kind %lld on cpu "
                             "%lld (cpus 0..%d)", kind, cpu, self->cpus - 1);
            return NULL;
        }
        native_step(self, (int)kind, (int)cpu, addr, arg, value);
        if (self->failed) {
            Py_DECREF(it);
            if (!PyErr_Occurred())
                PyErr_NoMemory();
            return NULL;
        }
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

/* a ScanStream's reads of guest memory on the direct path: GuestMemory.read32 / read_entry
 * (bench.machine.memory) on this executor's view of the same dictionaries */
static int native_stream_read(void *ctx, int method, u64 gpa, int pae, u64 *value) {
    Native *self = ctx;
    *value = method == 0 ? py_word(self, gpa) : py_entry(self, gpa, pae);
    if (self->failed) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* the next chunk's op columns as a tuple of array objects (bench.recording.OP_FIELDS) */
static PyObject *op_arrays(PyObject *array_type, void *const cols[6], Py_ssize_t n) {
    static const char *codes[6] = {"B", "H", "Q", "q", "Q", "H"};
    static const Py_ssize_t sizes[6] = {1, 2, 8, 8, 8, 2};
    PyObject *out = PyTuple_New(6);
    if (!out)
        return NULL;
    for (int i = 0; i < 6; i++) {
        PyObject *raw = PyBytes_FromStringAndSize(cols[i], n * sizes[i]);
        PyObject *a = raw ? PyObject_CallFunction(array_type, "sO", codes[i], raw) : NULL;
        Py_XDECREF(raw);
        if (!a) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, a);
    }
    return out;
}

static PyObject *Native_run(Native *self, PyObject *iterable) {
    PyObject *r = Native_run_ops(self, iterable);
    page_cache_clear(self);
    return r;
}

static PyObject *Native_run_tee_impl(Native *self, PyObject *args);

/* run_tee(source, mem, log, insn_ids, insn_names, sink, chunk, read_sink): execute the
 * operations of the iterator ``source`` while recording them, as bench.recording.OpRecording.tee
 * feeding this executor: while the workload generates an operation, ``mem.log`` is ``log`` (its
 * ``at`` the operations executed before); each chunk of ``chunk`` operations (and the last,
 * possibly empty) goes to ``sink(columns, n, log.reads)`` as packed columns, or None when an
 * operation cannot be packed (the recording is then dropped). Instruction names get ids in
 * ``insn_ids``/``names``. A ScanStream source takes the direct path: no tuples, its reads made
 * through this executor, logged in C and handed to ``read_sink(columns, n)`` with each chunk. */
static PyObject *Native_run_tee(Native *self, PyObject *args) {
    PyObject *r = Native_run_tee_impl(self, args);
    page_cache_clear(self);
    return r;
}

/* the recording's id of instruction name ``insn``, given a new one when it is new (ids:
 * name -> id, names: id -> name); the cache holds the names list's own objects, so a hit by
 * identity is always the right name */
typedef struct {
    PyObject *key[8];
    long long id[8];
    int n;
} insn_cache_t;

static int insn_id(PyObject *ids, PyObject *names, insn_cache_t *cache, PyObject *insn,
                   long long *out) {
    for (int i = 0; i < cache->n; i++)
        if (cache->key[i] == insn) {
            *out = cache->id[i];
            return 0;
        }
    PyObject *id = PyDict_GetItemWithError(ids, insn); /* borrowed */
    if (!id) {
        if (PyErr_Occurred())
            return -1;
        id = PyLong_FromSsize_t(PyList_GET_SIZE(names));
        if (!id || PyDict_SetItem(ids, insn, id) < 0 || PyList_Append(names, insn) < 0) {
            Py_XDECREF(id);
            return -1;
        }
        Py_DECREF(id); /* the dict holds it */
        id = PyDict_GetItemWithError(ids, insn);
        if (!id)
            return -1;
    }
    long long v = PyLong_AsLongLong(id);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = v;
    if (cache->n < 8 && v >= 0 && v < PyList_GET_SIZE(names) &&
        PyList_GET_ITEM(names, v) == insn) {
        cache->key[cache->n] = insn;
        cache->id[cache->n++] = v;
    }
    return 0;
}

/* the next operation of a Python iterator for run_tee, generated with ``mem.log`` = ``log``
 * (its ``at`` = ``count``, the operations executed before) and detached afterwards: 1 with
 * the fields set (*op the tuple, owned; *insn borrowed from it, NULL without a sixth field;
 * kind -1 when the item is not an operation), 0 at the end, -1 on an error */
static int tee_next_tuple(Native *self, PyObject *it, PyObject *mem, PyObject *log,
                          long long count, PyObject **op_out, long long *kind, long long *cpu,
                          u64 *addr, i64 *arg, u64 *value, PyObject **insn) {
    PyObject *at = PyLong_FromLongLong(count);
    if (!at || PyObject_SetAttrString(log, "at", at) < 0 ||
        PyObject_SetAttrString(mem, "log", log) < 0) {
        Py_XDECREF(at);
        return -1;
    }
    Py_DECREF(at);
    PyObject *op = PyIter_Next(it);
    page_cache_clear(self); /* the generator ran: its memory may have changed */
    PyObject *etype, *evalue, *etb;
    PyErr_Fetch(&etype, &evalue, &etb); /* the generator's exception, kept over the reset */
    if (PyObject_SetAttrString(mem, "log", Py_None) < 0) {
        Py_XDECREF(op);
        Py_XDECREF(etype);
        Py_XDECREF(evalue);
        Py_XDECREF(etb);
        return -1;
    }
    if (etype) {
        Py_XDECREF(op);
        PyErr_Restore(etype, evalue, etb);
        return -1;
    }
    if (!op)
        return 0;
    *op_out = op;
    if (!PyTuple_Check(op) || PyTuple_GET_SIZE(op) < 5)
        return 1; /* kind stays -1: the caller's error */
    *kind = PyLong_AsLongLong(PyTuple_GET_ITEM(op, 0));
    *cpu = PyLong_AsLongLong(PyTuple_GET_ITEM(op, 1));
    *addr = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(op, 2));
    *arg = PyLong_AsLongLong(PyTuple_GET_ITEM(op, 3));
    *value = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(op, 4));
    if (PyErr_Occurred()) {
        Py_DECREF(op);
        *op_out = NULL;
        return -1;
    }
    *insn = PyTuple_GET_SIZE(op) == 6 ? PyTuple_GET_ITEM(op, 5) : NULL;
    return 1;
}

/* a chunk to the recording: sink(columns, n, reads), columns None when an operation could not
 * be packed; on the direct path the stream's reads go to read_sink(read columns, count) */
static int tee_flush(PyObject *array_type, void *const cols[6], Py_ssize_t n, int packable,
                     PyObject *sink, PyObject *reads, PyObject *stream, PyObject *read_sink) {
    PyObject *columns = packable ? op_arrays(array_type, cols, n) : Py_NewRef(Py_None);
    PyObject *r = columns ? PyObject_CallFunction(sink, "OnO", columns, n, reads) : NULL;
    Py_XDECREF(columns);
    if (!r)
        return -1;
    Py_DECREF(r);
    if (!stream)
        return 0;
    Py_ssize_t nreads;
    PyObject *logged = scan_stream_take_reads(stream, array_type, &nreads);
    if (!logged)
        return -1;
    r = logged == Py_None ? Py_NewRef(Py_None)
                          : PyObject_CallFunction(read_sink, "On", logged, nreads);
    Py_DECREF(logged);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *Native_run_tee_impl(Native *self, PyObject *args) {
    PyObject *source, *mem, *log, *ids, *names, *sink, *read_sink;
    Py_ssize_t chunk;
    if (!PyArg_ParseTuple(args, "OOOO!O!OnO", &source, &mem, &log, &PyDict_Type, &ids,
                          &PyList_Type, &names, &sink, &chunk, &read_sink))
        return NULL;
    if (chunk < 1 || chunk > (1 << 24)) {
        PyErr_SetString(PyExc_ValueError, "native executor: bad chunk");
        return NULL;
    }
    PyObject *array_mod = PyImport_ImportModule("array");
    PyObject *array_type = array_mod ? PyObject_GetAttrString(array_mod, "array") : NULL;
    Py_XDECREF(array_mod);
    PyObject *reads = log ? PyObject_GetAttrString(log, "reads") : NULL;
    PyObject *it = PyObject_GetIter(source);
    unsigned char *kinds = malloc(chunk);
    uint16_t *cpus = malloc(chunk * 2), *insns = malloc(chunk * 2);
    u64 *addrs = malloc(chunk * 8), *values = malloc(chunk * 8);
    i64 *oargs = malloc(chunk * 8);
    void *const cols[6] = {kinds, cpus, addrs, oargs, values, insns};
    PyObject *result = NULL;
    int direct = 0;
    if (!array_type || !reads || !it || !kinds || !cpus || !insns || !addrs || !values ||
        !oargs) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t n = 0;
    long long count = 0;
    int packable = 1;
    insn_cache_t cache = {.n = 0};
    /* a ScanStream (bench/core/_scan.c) hands its operations over without a tuple and reads
     * guest memory through this executor (native_stream_read: GuestMemory's read32/read_entry
     * on the same dictionaries), logging each read itself (handed over with each chunk) */
    direct = it ? scan_stream_check(it) : 0;
    if (direct)
        scan_stream_attach(it, native_stream_read, self, 1);
    for (;;) {
        long long kind = -1, cpu = -1;
        u64 addr = 0, value = 0;
        i64 arg = 0;
        PyObject *op = NULL, *insn = NULL; /* op: the tuple (owned), insn borrowed from it */
        int got;
        if (direct) {
            int k, c;
            got = scan_stream_pull(it, count, &k, &c, &addr, &arg, &value, &insn);
            kind = k;
            cpu = c;
        } else {
            got = tee_next_tuple(self, it, mem, log, count, &op, &kind, &cpu, &addr, &arg,
                                 &value, &insn);
        }
        if (got < 0)
            goto done;
        if (!got)
            break;
        if (kind < 0 || kind > K_MARK || cpu < 0 || cpu >= self->cpus) {
            Py_XDECREF(op);
            PyErr_Format(PyExc_ValueError, "native executor: operation kind %lld on cpu %lld "
                         "(cpus 0..%d)", kind, cpu, self->cpus - 1);
            goto done;
        }
        if (packable) {
            long long idv = -1;
            if (insn && insn_id(ids, names, &cache, insn, &idv) < 0) {
                Py_XDECREF(op);
                goto done;
            }
            if (!insn || idv > 0xFFFF || cpu > 0xFFFF) {
                packable = 0; /* not a 6-tuple, or outside the columns' types */
            } else {
                kinds[n] = (unsigned char)kind;
                cpus[n] = (uint16_t)cpu;
                addrs[n] = addr;
                oargs[n] = arg;
                values[n] = value;
                insns[n] = (uint16_t)idv;
            }
        }
        Py_XDECREF(op);
        n++;
        count++;
        native_step(self, (int)kind, (int)cpu, addr, arg, value);
        if (self->failed) {
            if (!PyErr_Occurred())
                PyErr_NoMemory();
            goto done;
        }
        if (n == chunk) {
            if (tee_flush(array_type, cols, n, packable, sink, reads, direct ? it : NULL,
                          read_sink) < 0)
                goto done;
            n = 0;
        }
    }
    if (tee_flush(array_type, cols, n, packable, sink, reads, direct ? it : NULL, read_sink) < 0)
        goto done;
    result = Py_NewRef(Py_None);
done:
    if (direct)
        scan_stream_attach(it, NULL, NULL, 0);
    Py_XDECREF(array_type);
    Py_XDECREF(reads);
    Py_XDECREF(it);
    free(kinds);
    free(cpus);
    free(insns);
    free(addrs);
    free(values);
    free(oargs);
    return result;
}

/* finish() -> (creates, faults, violations, {gfn: [(writes, extra, rebuilt), ...]}): the
 * Recorder's finish (closes the open bursts and intervals) */
static PyObject *Native_finish(Native *self, PyObject *unused) {
    PyObject *tables = PyDict_New();
    if (!tables)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(self->rtab_order);
    /* the first interval of each table decides its place, as trace.tables.setdefault does:
     * tables that got intervals during the run come first, in the order of their first one;
     * here every table's list is complete, so order them by first use (dict order is not
     * part of the trace's meaning: bench.oracle sorts what it publishes) */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *g = PyList_GET_ITEM(self->rtab_order, i);
        u64 gfn = PyLong_AsUnsignedLongLong(g);
        rtable_t *t = rtable_get(self, gfn);
        if (t->burst) {
            if (!t->cold)
                rtable_interval(self, gfn, t, t->writes, t->extra, 1);
        } else {
            rtable_interval(self, gfn, t, t->writes, 0, 0);
        }
        t->burst = t->cold = 1;
        if (self->failed) {
            Py_DECREF(tables);
            return NULL;
        }
        if (t->intervals) {
            if (PyDict_SetItem(tables, g, t->intervals) < 0) {
                Py_DECREF(tables);
                return NULL;
            }
            Py_CLEAR(t->intervals);
        }
    }
    return Py_BuildValue("(LLLN)", (long long)self->creates, (long long)self->faults,
                         (long long)self->violations, tables);
}

static PyObject *Native_counters(Native *self, PyObject *unused) {
    return counts_tuple(self->counters);
}

static PyObject *Native_marks(Native *self, PyObject *unused) {
    Py_INCREF(self->marks);
    return self->marks;
}

static void Native_dealloc(Native *self) {
    page_cache_clear(self);
    Py_XDECREF(self->mem_tables);
    Py_XDECREF(self->mem_words);
    Py_XDECREF(self->marks);
    Py_XDECREF(self->rtab_order);
    free(self->cr3);
    for (size_t i = 0; i < self->nrtabs; i++)
        Py_XDECREF(self->rtabs[i].intervals);
    free(self->rtabs);
    map_free(&self->rtab_index);
    map_free(&self->directories);
    map_free(&self->roots);
    map_free(&self->direct_pages);
    map_free(&self->direct_frames);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Native_methods[] = {
    {"run", (PyCFunction)Native_run, METH_O, "run(ops): execute every operation natively"},
    {"run_tee", (PyCFunction)Native_run_tee, METH_VARARGS,
     "run_tee(source, mem, log, insn_ids, insn_names, sink, chunk, read_sink): execute and record"},
    {"finish", (PyCFunction)Native_finish, METH_NOARGS,
     "(creates, faults, violations, tables): the oracle's record (with trace)"},
    {"counters", (PyCFunction)Native_counters, METH_NOARGS, "the counters (ALL_COUNTERS order)"},
    {"marks", (PyCFunction)Native_marks, METH_NOARGS, "[(phase, counters tuple)]"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject NativeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bench.core._core.Native",
    .tp_doc = "Native execution on a GuestMemory, with the oracle's recorder.",
    .tp_basicsize = sizeof(Native),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Native_init,
    .tp_dealloc = (destructor)Native_dealloc,
    .tp_methods = Native_methods,
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "bench.core._core",
    "The native simulation core (bench/core/_core.c; the readable reference is bench.machine).",
    -1, NULL, NULL, NULL, NULL, NULL,
};


PyMODINIT_FUNC PyInit__core(void) {
    PyObject *errors = PyImport_ImportModule("bench.errors");
    if (!errors)
        return NULL;
    BenchError = PyObject_GetAttrString(errors, "BenchError");
    Py_DECREF(errors);
    if (!BenchError)
        return NULL;
    if (PyType_Ready(&CoreType) < 0 || PyType_Ready(&NativeType) < 0 ||
        PyType_Ready(&ScanStreamType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&core_module);
    if (!m)
        return NULL;
    PyObject *names = PyTuple_New(NCOUNTERS);
    if (!names) {
        Py_DECREF(m);
        return NULL;
    }
    for (int i = 0; i < NCOUNTERS; i++)
        PyTuple_SET_ITEM(names, i, PyUnicode_FromString(counter_names[i]));
    Py_INCREF(&CoreType);
    Py_INCREF(&NativeType);
    Py_INCREF(&ScanStreamType);
    if (PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0 ||
        PyModule_AddObject(m, "Native", (PyObject *)&NativeType) < 0 ||
        PyModule_AddObject(m, "ScanStream", (PyObject *)&ScanStreamType) < 0 ||
        PyModule_AddObject(m, "COUNTERS", names) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
