/* hotpath.c: a C99 reference of shadowbench's hot path, a speed yardstick (issue 17).
 *
 * It replays an exported guest run (bench/core/benchmark.py writes the file; README.md beside
 * this file documents its layout and what this program simplifies) under KVM 2.6.26's shadow
 * MMU with the flood-count policy at threshold 3, on the data structures a native core would
 * use: guest page tables as flat arrays, an open-addressing table from gfn to 512-entry u64
 * spte pages, a packed rmap and a per-vCPU flood counter. It times only the simulation loop
 * and prints one JSON line: ops, seconds, ops/s and its event counts.
 *
 *     cc -O2 -o hotpath hotpath.c && ./hotpath stream.bin
 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef uint64_t u64;
typedef uint32_t u32;
typedef int64_t i64;

enum { STORE, BTR, BTS, LOAD, INVLPG, CR3, COMPUTE, MARK };
enum { READ32, READ_ENTRY, READ };
#define PAGE_OFFSET 0xC0000000ULL
#define ADDR_MASK_32 0xFFFFF000ULL
#define ADDR_MASK_PAE 0x000FFFFFFFFFF000ULL
#define SPTE_P 0x1ULL
#define SPTE_W 0x2ULL
#define SPTE_A 0x20ULL
#define NONE (-1)
#define THRESHOLD 3
#define MAX_CPUS 64

static void die(const char *what) {
    fprintf(stderr, "hotpath: %s\n", what);
    exit(2);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

/* ---------------------------------------------------------------- open-addressing u64 -> i64 */
#define EMPTY_KEY UINT64_MAX
typedef struct { u64 *keys; i64 *vals; size_t cap, used; } Table;

static void table_init(Table *t, size_t cap) {
    t->cap = cap; t->used = 0;
    t->keys = xmalloc(cap * sizeof(u64));
    t->vals = xmalloc(cap * sizeof(i64));
    memset(t->keys, 0xFF, cap * sizeof(u64));
}

static inline size_t slot_of(const Table *t, u64 key) {
    u64 h = key * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h ^ (h >> 29)) & (t->cap - 1);
}

static inline i64 *table_find(const Table *t, u64 key) {
    size_t i = slot_of(t, key);
    for (;;) {
        u64 k = t->keys[i];
        if (k == key) return &t->vals[i];
        if (k == EMPTY_KEY) return NULL;
        i = (i + 1) & (t->cap - 1);
    }
}

static void table_put(Table *t, u64 key, i64 val);

static void table_grow(Table *t) {
    Table n;
    table_init(&n, t->cap * 2);
    for (size_t i = 0; i < t->cap; i++)
        if (t->keys[i] != EMPTY_KEY) table_put(&n, t->keys[i], t->vals[i]);
    free(t->keys); free(t->vals);
    *t = n;
}

static void table_put(Table *t, u64 key, i64 val) {
    if ((t->used + 1) * 2 > t->cap) table_grow(t);
    size_t i = slot_of(t, key);
    while (t->keys[i] != EMPTY_KEY && t->keys[i] != key) i = (i + 1) & (t->cap - 1);
    if (t->keys[i] == EMPTY_KEY) t->used++;
    t->keys[i] = key; t->vals[i] = val;
}

/* deletion by backward shift (linear probing keeps no tombstones) */
static void table_del(Table *t, u64 key) {
    size_t mask = t->cap - 1, i = slot_of(t, key);
    while (t->keys[i] != key) {
        if (t->keys[i] == EMPTY_KEY) return;
        i = (i + 1) & mask;
    }
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (t->keys[j] == EMPTY_KEY) break;
        size_t home = slot_of(t, t->keys[j]);
        /* move j back to i unless its home lies cyclically in (i, j] */
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            t->keys[i] = t->keys[j]; t->vals[i] = t->vals[j]; i = j;
        }
    }
    t->keys[i] = EMPTY_KEY; t->used--;
}

/* ---------------------------------------------------------------- guest memory */
static int pae;
static size_t esize;
static Table tables;   /* gfn -> index of a 1024-word page in table_words */
static u32 *table_words;
static Table words;    /* word address (gpa >> 2) -> value, every other page (0 when absent) */

static inline u32 word_at(u64 gpa) {
    i64 *p = table_find(&tables, gpa >> 12);
    if (p) return table_words[(size_t)*p * 1024 + ((gpa & 0xFFF) >> 2)];
    i64 *w = table_find(&words, gpa >> 2);
    return w ? (u32)*w : 0;
}

static inline void write32(u64 gpa, u32 value) {
    i64 *p = table_find(&tables, gpa >> 12);
    if (p) { table_words[(size_t)*p * 1024 + ((gpa & 0xFFF) >> 2)] = value; return; }
    i64 *w = table_find(&words, gpa >> 2);
    if (w) *w = value;
    else if (value) table_put(&words, gpa >> 2, value);
}

static inline u64 read_entry(u64 gpa, int is_pae) {
    i64 *p = table_find(&tables, gpa >> 12);
    if (p) {
        u32 *page = &table_words[(size_t)*p * 1024];
        size_t i = (gpa & 0xFFF) >> 2;
        return is_pae ? page[i] | ((u64)page[i + 1] << 32) : page[i];
    }
    return is_pae ? word_at(gpa) | ((u64)word_at(gpa + 4) << 32) : word_at(gpa);
}

static u64 read_bytes(u64 gpa, int width) {
    if (width == 4 && !(gpa & 3)) return word_at(gpa);
    u64 v = 0;
    for (int i = 0; i < width; i++) {
        u64 a = gpa + i;
        v |= (u64)((word_at(a & ~3ULL) >> (8 * (a & 3))) & 0xFF) << (8 * i);
    }
    return v;
}

static void write_bytes(u64 gpa, int width, u64 value) {
    if (width == 4 && !(gpa & 3)) { write32(gpa, (u32)value); return; }
    for (int i = 0; i < width; i++) {
        u64 a = gpa + i, word = a & ~3ULL;
        int shift = 8 * (int)(a & 3);
        u32 old = word_at(word), byte = (u32)(value >> (8 * i)) & 0xFF;
        write32(word, (old & ~(0xFFu << shift)) | (byte << shift));
    }
}

static inline void apply_write(u64 gpa, int kind, i64 arg, u64 value) {
    if (kind == STORE) { write_bytes(gpa, (int)arg, value); return; }
    u64 word = gpa & ~3ULL;
    u32 old = word_at(word);
    write32(word, kind == BTR ? old & ~(1u << arg) : old | (1u << arg));
}

/* ---------------------------------------------------------------- guest walk */
typedef struct { u64 gfn, pt_gfn, leaf_gpa, leaf; int has_pt, writable, dirty, dirtied; } Walk;

static int walk(u64 cr3, u64 vaddr, int write, int user, Walk *w) {
    u64 pde_gpa;
    if (pae) {
        u64 pdpte = read_entry((cr3 & 0xFFFFFFE0ULL) + ((vaddr >> 30) << 3), 1);
        if (!(pdpte & 1)) return 0;
        pde_gpa = (pdpte & ADDR_MASK_PAE) + (((vaddr >> 21) & 0x1FF) << 3);
    } else {
        pde_gpa = (cr3 & ADDR_MASK_32) + ((vaddr >> 22) << 2);
    }
    u64 pde = read_entry(pde_gpa, pae);
    if (!(pde & 1) || (user && !(pde & 4))) return 0;
    u64 mask = pae ? ADDR_MASK_PAE : ADDR_MASK_32;
    if (pde & 0x80) {
        if (write && !(pde & 2)) return 0;
        w->dirtied = write && !(pde & 0x40);
        u64 want = pde | 0x20 | (write ? 0x40 : 0);
        if (want != pde) { write32(pde_gpa, (u32)want); pde = want; }
        u64 span = (1ULL << ((pae ? 21 : 22) - 12)) - 1;
        w->gfn = (((pde & mask) >> 12) & ~span) + ((vaddr >> 12) & span);
        w->has_pt = 0; w->pt_gfn = 0; w->leaf_gpa = pde_gpa; w->leaf = pde;
        w->writable = (pde & 2) != 0; w->dirty = (pde & 0x40) != 0;
        return 1;
    }
    u64 pte_gpa = (pde & mask) + ((vaddr >> 12) & (pae ? 511 : 1023)) * esize;
    u64 pte = read_entry(pte_gpa, pae);
    if (!(pte & 1) || (user && !(pte & 4))) return 0;
    int writable = (pde & 2) && (pte & 2);
    if (write && !writable) return 0;
    w->dirtied = write && !(pte & 0x40);
    if (!(pde & 0x20)) write32(pde_gpa, (u32)(pde | 0x20));
    u64 want = pte | 0x20 | (write ? 0x40 : 0);
    if (want != pte) { write32(pte_gpa, (u32)want); pte = want; }
    w->gfn = (pte & mask) >> 12; w->has_pt = 1; w->pt_gfn = (pde & mask) >> 12;
    w->leaf_gpa = pte_gpa; w->leaf = pte; w->writable = writable; w->dirty = (pte & 0x40) != 0;
    return 1;
}

/* ---------------------------------------------------------------- shadow pages */
typedef struct {
    u64 gfn;
    int level, quadrant, direct, zapped, prefetched, root_count;
    int next;               /* next indirect page of the same gfn, or the free list */
    u64 *ent;               /* level 1: sptes (0 = none); level 2: child index + 1 (0 = none) */
    u64 notrap[8], trap[8]; /* bypass_guest_pf: shadow_notrap_nonpresent_pte entries */
    u32 *parents;           /* (parent << 9 | index) of every level-2 entry linking this page */
    int nparents, capparents;
} Sp;

static Sp *sps;
static int nsps, capsps, free_sp = NONE, live_sps;
static Table pages;   /* (gfn, level, quadrant, direct) -> page */
static Table by_gfn;  /* gfn -> first indirect page of that gfn (linked through next) */
static Table rmap;    /* gfn -> ref << 1 | 1 (one spte mapping it) or a descriptor index << 1 */
typedef struct { u32 *refs; int n, cap; } Desc;
static Desc *descs;
static int ndescs, capdescs, free_desc = NONE;

static int cpus;
static u64 cr3[MAX_CPUS];
static int roots[MAX_CPUS][4], reload_roots[MAX_CPUS];
/* flood-count 2.6.26: last_pt_write_gfn/count, last_pte_updated (a spte slot, or none) */
static u64 last_gfn[MAX_CPUS];
static int last_count[MAX_CPUS];
static i64 last_pte[MAX_CPUS];

static struct {
    u64 native_load, native_store, native_locked_rmw, native_invlpg, native_cr3,
        native_compute_cycles, pf_fixed, pf_guest, pf_bypassed, exit_hidden_fault,
        exit_guest_fault, exit_ptwrite_emulate, exit_cr3, tlb_flush, insn_emulation,
        mmu_pte_write, mmu_pte_updated, mmu_pde_zapped, mmu_flooded, mmu_shadow_zapped,
        mmu_cache_miss;
} c;

static inline u64 page_key(u64 gfn, int level, int quadrant, int direct) {
    return gfn << 8 | (u64)level << 4 | (u64)quadrant << 1 | (u64)direct;
}

static inline int bit(const u64 *set, int i) { return (int)(set[i >> 6] >> (i & 63)) & 1; }
static inline void bit_set(u64 *set, int i) { set[i >> 6] |= 1ULL << (i & 63); }
static inline void bit_clear(u64 *set, int i) { set[i >> 6] &= ~(1ULL << (i & 63)); }

static int notrap(const Sp *sp, int idx) {
    if (bit(sp->notrap, idx)) return 1;
    if (!sp->prefetched || bit(sp->trap, idx)) return 0;
    u64 base = sp->gfn << 12;
    if (pae) return !(read_entry(base + ((u64)idx << 3), 1) & 1);
    return !(read_entry(base + ((u64)((sp->quadrant << 9) + idx) << 2), 0) & 1);
}

static void set_nonpresent(Sp *sp, int idx, int is_notrap) {
    if (is_notrap) { bit_set(sp->notrap, idx); bit_clear(sp->trap, idx); }
    else { bit_clear(sp->notrap, idx); if (sp->prefetched) bit_set(sp->trap, idx); }
}

/* ---- the packed rmap */
static void rmap_add(u64 gfn, u32 ref) {
    i64 *e = table_find(&rmap, gfn);
    if (!e) { table_put(&rmap, gfn, (i64)ref << 1 | 1); return; }
    Desc *d;
    if (*e & 1) {
        int k;
        if (free_desc != NONE) { k = free_desc; free_desc = descs[k].n; }
        else {
            if (ndescs == capdescs) {
                capdescs = capdescs ? 2 * capdescs : 1024;
                descs = realloc(descs, capdescs * sizeof(Desc));
                if (!descs) die("out of memory");
            }
            k = ndescs++;
            descs[k].refs = NULL; descs[k].cap = 0;
        }
        d = &descs[k];
        if (d->cap < 4) { d->cap = 4; d->refs = realloc(d->refs, 4 * sizeof(u32)); }
        d->refs[0] = (u32)(*e >> 1); d->n = 1;
        *e = (i64)k << 1;
    } else {
        d = &descs[*e >> 1];
    }
    if (d->n == d->cap) {
        d->cap *= 2;
        d->refs = realloc(d->refs, d->cap * sizeof(u32));
        if (!d->refs) die("out of memory");
    }
    d->refs[d->n++] = ref;
}

static void rmap_remove(u64 gfn, u32 ref) {
    i64 *e = table_find(&rmap, gfn);
    if (!e) return;
    if (*e & 1) { if ((u32)(*e >> 1) == ref) table_del(&rmap, gfn); return; }
    int k = (int)(*e >> 1);
    Desc *d = &descs[k];
    for (int i = 0; i < d->n; i++)
        if (d->refs[i] == ref) { d->refs[i] = d->refs[--d->n]; break; }
    if (d->n == 1) {
        *e = (i64)d->refs[0] << 1 | 1;
        d->n = free_desc; free_desc = k;
    }
}

static void write_protect(u64 gfn) {
    i64 *e = table_find(&rmap, gfn);
    if (!e) return;
    if (*e & 1) {
        u32 ref = (u32)(*e >> 1);
        sps[ref >> 9].ent[ref & 511] &= ~SPTE_W;
        return;
    }
    Desc *d = &descs[*e >> 1];
    for (int i = 0; i < d->n; i++) sps[d->refs[i] >> 9].ent[d->refs[i] & 511] &= ~SPTE_W;
}

static void parent_add(Sp *child, int parent, int idx) {
    u32 ref = (u32)parent << 9 | (u32)idx;
    for (int i = 0; i < child->nparents; i++) if (child->parents[i] == ref) return;
    if (child->nparents == child->capparents) {
        child->capparents = child->capparents ? 2 * child->capparents : 2;
        child->parents = realloc(child->parents, child->capparents * sizeof(u32));
        if (!child->parents) die("out of memory");
    }
    child->parents[child->nparents++] = ref;
}

static void parent_discard(Sp *child, int parent, int idx) {
    u32 ref = (u32)parent << 9 | (u32)idx;
    for (int i = 0; i < child->nparents; i++)
        if (child->parents[i] == ref) { child->parents[i] = child->parents[--child->nparents]; return; }
}

static int get_page(u64 gfn, int level, int quadrant, int direct) {
    u64 key = page_key(gfn, level, quadrant, direct);
    i64 *found = table_find(&pages, key);
    if (found) return (int)*found;
    c.mmu_cache_miss++;
    int s;
    if (free_sp != NONE) { s = free_sp; free_sp = sps[s].next; }
    else {
        if (nsps == capsps) {
            capsps = capsps ? 2 * capsps : 1024;
            sps = realloc(sps, capsps * sizeof(Sp));
            if (!sps) die("out of memory");
        }
        s = nsps++;
        sps[s].ent = xmalloc(512 * sizeof(u64));
        sps[s].parents = NULL; sps[s].capparents = 0;
    }
    live_sps++;
    Sp *sp = &sps[s];
    sp->gfn = gfn; sp->level = level; sp->quadrant = quadrant; sp->direct = direct;
    sp->zapped = 0; sp->root_count = 0; sp->next = NONE; sp->nparents = 0;
    sp->prefetched = !direct && (pae || level == 1);
    memset(sp->ent, 0, 512 * sizeof(u64));
    memset(sp->notrap, 0, sizeof sp->notrap); memset(sp->trap, 0, sizeof sp->trap);
    table_put(&pages, key, s);
    if (!direct) {
        i64 *head = table_find(&by_gfn, gfn);
        if (!head) table_put(&by_gfn, gfn, s);
        else {  /* append: the same order as the simulator's list */
            int t = (int)*head;
            while (sps[t].next != NONE) t = sps[t].next;
            sps[t].next = s;
        }
        write_protect(gfn);
    }
    return s;
}

static void zap_page(int s) {
    Sp *sp = &sps[s];
    c.mmu_shadow_zapped++;
    for (int idx = 0; idx < 512; idx++) {
        u64 e = sp->ent[idx];
        if (!e) continue;
        if (sp->level == 1) rmap_remove(e >> 12, (u32)s << 9 | (u32)idx);
        else parent_discard(&sps[e - 1], s, idx);
        sp->ent[idx] = 0;
    }
    for (int i = 0; i < sp->nparents; i++) {
        int p = (int)(sp->parents[i] >> 9), idx = (int)(sp->parents[i] & 511);
        if (sps[p].ent[idx] == (u64)s + 1) { sps[p].ent[idx] = 0; set_nonpresent(&sps[p], idx, 0); }
    }
    sp->nparents = 0;
    table_del(&pages, page_key(sp->gfn, sp->level, sp->quadrant, sp->direct));
    if (!sp->direct) {
        i64 *head = table_find(&by_gfn, sp->gfn);
        if ((int)*head == s) {
            if (sp->next == NONE) table_del(&by_gfn, sp->gfn);
            else *head = sp->next;
        } else {
            int t = (int)*head;
            while (sps[t].next != s) t = sps[t].next;
            sps[t].next = sp->next;
        }
    }
    if (sp->root_count) {
        for (int cpu = 0; cpu < cpus; cpu++)
            for (int i = 0; i < 4; i++)
                if (roots[cpu][i] == s) { roots[cpu][i] = NONE; reload_roots[cpu] = 1; sp->root_count--; }
    }
    sp->zapped = 1;
    for (int cpu = 0; cpu < cpus; cpu++) last_pte[cpu] = NONE;  /* reset_last_pte_updated */
    sp->next = free_sp; free_sp = s; live_sps--;  /* (zapped stays set until it is reused) */
}

static void load_roots(int cpu) {
    for (int i = 0; i < 4; i++) if (roots[cpu][i] != NONE) sps[roots[cpu][i]].root_count--;
    for (int i = 0; i < 4; i++) {
        int s = NONE;
        if (pae) {
            u64 pdpte = read_entry((cr3[cpu] & 0xFFFFFFE0ULL) + 8 * (u64)i, 1);
            if (pdpte & 1) s = get_page((pdpte & ADDR_MASK_PAE) >> 12, 2, 0, 0);
        } else {
            s = get_page(cr3[cpu] >> 12, 2, i, 0);
        }
        if (s != NONE) sps[s].root_count++;
        roots[cpu][i] = s;
    }
    reload_roots[cpu] = 0;
}

/* mmu_set_spte; returns ptwrite */
static int set_spte(int cpu, int s, int idx, u64 gfn, int writable, int dirty, int write_fault,
                    int speculative) {
    Sp *sp = &sps[s];
    u64 old = sp->ent[idx];
    u32 ref = (u32)s << 9 | (u32)idx;
    if (old && old >> 12 != gfn) { rmap_remove(old >> 12, ref); old = 0; }
    u64 spte = gfn << 12 | SPTE_P | (speculative ? 0 : SPTE_A);
    int ptwrite = 0;
    if (writable && dirty) {
        if (table_find(&by_gfn, gfn)) ptwrite = write_fault;
        else spte |= SPTE_W;
    }
    sp->ent[idx] = spte;
    if (!old) rmap_add(gfn, ref);
    if (!ptwrite) last_pte[cpu] = ref;  /* K26: last_pte_updated = shadow_pte */
    return ptwrite;
}

/* flood-count 2.6.26's on_pte_write: flooded, or a write of fewer than 4 bytes */
static int flood_says_zap(int cpu, u64 gfn, int nbytes) {
    int accessed = 0;
    if (last_pte[cpu] != NONE) {
        u32 ref = (u32)last_pte[cpu];
        accessed = (sps[ref >> 9].ent[ref & 511] & SPTE_A) != 0;
    }
    int flooded = 0;
    if (gfn == last_gfn[cpu] && !accessed) {
        flooded = ++last_count[cpu] >= THRESHOLD;
    } else {
        last_gfn[cpu] = gfn; last_count[cpu] = 1; last_pte[cpu] = NONE;
    }
    return flooded || nbytes < 4;
}

/* kvm_mmu_pte_write */
static void mmu_pte_write(int cpu, u64 gpa, int nbytes, u64 new_gpte) {
    u64 gfn = gpa >> 12, offset = gpa & 0xFFF;
    c.mmu_pte_write++;
    int zap = flood_says_zap(cpu, gfn, nbytes);
    if ((offset ^ (offset + nbytes - 1)) & ~(u64)(esize - 1)) zap = 1;  /* misaligned */
    i64 *head = table_find(&by_gfn, gfn);
    if (!head) return;
    int list[64], n = 0;
    for (int t = (int)*head; t != NONE; t = sps[t].next) {
        if (n == 64) die("more than 64 shadow pages of one gfn");
        list[n++] = t;
    }
    for (int k = 0; k < n; k++) {
        int s = list[k];
        Sp *sp = &sps[s];
        if (sp->zapped) continue;
        if (zap) { zap_page(s); c.mmu_flooded++; continue; }
        int idxs[2], nidx = 1;
        if (pae) idxs[0] = (int)(offset >> 3);
        else {
            int gi = (int)(offset >> 2);
            if (sp->level == 1) {
                if (gi >> 9 != sp->quadrant) continue;
                idxs[0] = gi & 511;
            } else {
                if (gi >> 8 != sp->quadrant) continue;
                idxs[0] = (gi & 0xFF) * 2; idxs[1] = idxs[0] + 1; nidx = 2;
            }
        }
        for (int j = 0; j < nidx; j++) {
            int idx = idxs[j];
            u64 e = sp->ent[idx];
            sp->ent[idx] = 0;
            if (sp->level == 1) {
                if (e) rmap_remove(e >> 12, (u32)s << 9 | (u32)idx);
                c.mmu_pte_updated++;
                if ((new_gpte & 0x21) == 0x21 && nbytes >= 4)
                    set_spte(cpu, s, idx, (new_gpte & ADDR_MASK_PAE) >> 12, (new_gpte & 2) != 0,
                             (new_gpte & 0x40) != 0, 0, 1);
                else
                    set_nonpresent(sp, idx, !(new_gpte & 1));
            } else {
                if (e) parent_discard(&sps[e - 1], s, idx);
                set_nonpresent(sp, idx, 0);
                c.mmu_pde_zapped++;
            }
        }
    }
}

enum { FIXED, PTWRITE, GUEST_FAULT };

static int page_fault(int cpu, u64 vaddr, int write, Walk *w) {
    if (reload_roots[cpu]) load_roots(cpu);
    int user = vaddr < PAGE_OFFSET;
    if (!walk(cr3[cpu], vaddr, write, user, w)) {
        c.exit_guest_fault++; c.pf_guest++;
        last_count[cpu] = 0;  /* 2.6.23: reset when the fault is reflected */
        return GUEST_FAULT;
    }
    if (w->dirtied) mmu_pte_write(cpu, w->leaf_gpa, (int)esize, w->leaf);  /* walk_addr's D */
    int r = (int)(vaddr >> 30);
    if (roots[cpu][r] == NONE) {
        load_roots(cpu);
        if (roots[cpu][r] == NONE) die("no shadow root: the guest changed its PDPT without reloading cr3");
    }
    int root = roots[cpu][r], i2 = (int)((vaddr >> 21) & 0x1FF);
    u64 child = sps[root].ent[i2];
    int s;
    if (!child) {
        if (!w->has_pt) s = get_page(w->gfn & ~0x1FFULL, 1, 0, 1);
        else s = get_page(w->pt_gfn, 1, pae ? 0 : (int)((vaddr >> 21) & 1), 0);
        sps[root].ent[i2] = (u64)s + 1;
        parent_add(&sps[s], root, i2);
    } else {
        s = (int)child - 1;
    }
    int ptwrite = set_spte(cpu, s, (int)((vaddr >> 12) & 0x1FF), w->gfn, w->writable, w->dirty,
                           write, 0);
    c.pf_fixed++;
    if (!ptwrite) { c.exit_hidden_fault++; last_count[cpu] = 0; }  /* reset fork detector */
    return ptwrite ? PTWRITE : FIXED;
}

static void write_fault(int kind, int cpu, u64 vaddr, i64 arg, u64 value) {
    Walk w;
    int status = page_fault(cpu, vaddr, 1, &w);
    if (status == GUEST_FAULT) return;
    u64 gpa = w.gfn << 12 | (vaddr & 0xFFF);
    if (status != PTWRITE) { apply_write(gpa, kind, arg, value); return; }
    /* flood-count emulates every trapping write */
    c.exit_ptwrite_emulate++; c.insn_emulation++;
    u64 entry_gpa = gpa & ~(u64)(esize - 1);
    apply_write(gpa, kind, arg, value);
    u64 new_gpte = read_entry(entry_gpa, pae);
    if (kind == STORE) mmu_pte_write(cpu, gpa, (int)arg, new_gpte);
    else mmu_pte_write(cpu, gpa & ~3ULL, 4, new_gpte);
}

static void step(int kind, int cpu, u64 addr, i64 arg, u64 value) {
    if (kind <= LOAD) {
        int write = kind != LOAD;
        if (kind == LOAD) c.native_load++;
        else if (kind == STORE) c.native_store++;
        else c.native_locked_rmw++;
        int s2 = roots[cpu][addr >> 30];
        if (s2 != NONE) {
            int i2 = (int)((addr >> 21) & 0x1FF);
            u64 child = sps[s2].ent[i2];
            if (child) {
                Sp *sp1 = &sps[child - 1];
                int idx = (int)((addr >> 12) & 0x1FF);
                u64 spte = sp1->ent[idx];
                if (spte && (!write || (spte & SPTE_W))) {
                    sp1->ent[idx] = spte | SPTE_A;
                    if (write) apply_write((spte >> 12) << 12 | (addr & 0xFFF), kind, arg, value);
                    return;
                }
                if (!spte && notrap(sp1, idx)) { c.pf_bypassed++; return; }
            } else if (notrap(&sps[s2], i2)) { c.pf_bypassed++; return; }
        } else if (pae && !reload_roots[cpu] &&
                   !(read_entry((cr3[cpu] & 0xFFFFFFE0ULL) + 8 * (addr >> 30), 1) & 1)) {
            c.pf_bypassed++;
            return;
        }
        if (write) write_fault(kind, cpu, addr, arg, value);
        else { Walk w; page_fault(cpu, addr, 0, &w); }
        return;
    }
    switch (kind) {
    case INVLPG: c.native_invlpg++; break;  /* not intercepted (VMX with shadow paging: K26) */
    case CR3:
        c.native_cr3++; c.exit_cr3++; c.tlb_flush++;
        cr3[cpu] = addr;
        load_roots(cpu);
        break;
    case COMPUTE: c.native_compute_cycles += (u64)arg; break;
    default: break;  /* MARK: no instruction */
    }
}

/* ---------------------------------------------------------------- the file */
static FILE *in;
static void get(void *p, size_t size, size_t n) {
    if (n && fread(p, size, n, in) != n) die("the stream file is truncated");
}
static u64 get_u64(void) { u64 v; get(&v, 8, 1); return v; }
static void *column(size_t size, u64 n) {
    void *p = xmalloc((size_t)n * size);
    get(p, size, (size_t)n);
    return p;
}

int main(int argc, char **argv) {
    if (argc != 2) die("usage: hotpath STREAM.bin (written by python -m bench.core.benchmark)");
    in = fopen(argv[1], "rb");
    if (!in) die("cannot open the stream file");
    char magic[8];
    get(magic, 1, 8);
    if (memcmp(magic, "SBHOTP1\n", 8)) die("not a shadowbench hot-path stream (bad magic)");
    pae = (int)get_u64();
    cpus = (int)get_u64();
    u64 ntables = get_u64(), nwords = get_u64(), nops = get_u64(), nreads = get_u64();
    if ((pae != 0 && pae != 1) || cpus < 1 || cpus > MAX_CPUS) die("bad header");
    esize = pae ? 8 : 4;
    for (int i = 0; i < cpus; i++) cr3[i] = get_u64();

    size_t cap = 1024;
    while (cap < 4 * ntables) cap *= 2;
    table_init(&tables, cap);
    table_words = xmalloc((size_t)(ntables ? ntables : 1) * 4096);
    for (u64 i = 0; i < ntables; i++) {
        table_put(&tables, get_u64(), (i64)i);
        get(&table_words[i * 1024], 4, 1024);
    }
    cap = 1024;
    while (cap < 4 * nwords) cap *= 2;
    table_init(&words, cap);
    for (u64 i = 0; i < nwords; i++) { u64 a = get_u64(), v = get_u64(); table_put(&words, a, (i64)v); }

    uint8_t *kind = column(1, nops);
    uint16_t *cpu = column(2, nops);
    u64 *addr = column(8, nops);
    i64 *arg = column(8, nops);
    u64 *value = column(8, nops);
    u64 *r_at = column(8, nreads);
    uint8_t *r_method = column(1, nreads);
    u64 *r_gpa = column(8, nreads);
    uint8_t *r_arg = column(1, nreads);
    u64 *r_value = column(8, nreads);
    char tail;
    if (fread(&tail, 1, 1, in) != 0) die("the stream file has trailing bytes");
    fclose(in);
    for (u64 i = 0; i < nops; i++) {
        if (cpu[i] >= cpus || kind[i] > MARK) die("an operation has a bad kind or cpu");
        if ((kind[i] == STORE || kind[i] == LOAD) && arg[i] != 1 && arg[i] != 2 && arg[i] != 4 &&
            arg[i] != 8)
            die("a store or load has a width other than 1, 2, 4 or 8");
        if ((kind[i] == BTR || kind[i] == BTS) && (arg[i] < 0 || arg[i] > 31))
            die("a btr or bts has a bit number outside 0..31");
    }
    for (u64 i = 0; i < nreads; i++)
        if (r_method[i] > READ || (r_method[i] == READ && r_arg[i] > 8)) die("a read has a bad method or width");

    table_init(&pages, 4096);
    table_init(&by_gfn, 4096);
    table_init(&rmap, 1 << 16);
    for (int i = 0; i < cpus; i++) {
        for (int j = 0; j < 4; j++) roots[i][j] = NONE;
        last_pte[i] = NONE;
    }
    u64 reads_differed = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < cpus; i++) load_roots(i);
    u64 j = 0;
    for (u64 i = 0; i <= nops; i++) {
        /* the reads the workload made before operation i: repeated, and compared */
        for (; j < nreads && r_at[j] == i; j++) {
            u64 got;
            if (r_method[j] == READ32) got = word_at(r_gpa[j]);
            else if (r_method[j] == READ_ENTRY) got = read_entry(r_gpa[j], r_arg[j] != 0);
            else got = read_bytes(r_gpa[j], r_arg[j]);
            reads_differed += got != r_value[j];
        }
        if (i < nops) step(kind[i], cpu[i], addr[i], arg[i], value[i]);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;

    printf("{\"ops\": %llu, \"seconds\": %.9f, \"ops_per_s\": %.1f, \"reads_checked\": %llu, "
           "\"reads_differed\": %llu, \"shadow_pages\": %d, \"counters\": {",
           (unsigned long long)nops, seconds, seconds > 0 ? (double)nops / seconds : 0.0,
           (unsigned long long)j, (unsigned long long)reads_differed, live_sps);
#define COUNTER(name, sep) printf("\"" #name "\": %llu" sep, (unsigned long long)c.name)
    COUNTER(native_load, ", "); COUNTER(native_store, ", "); COUNTER(native_locked_rmw, ", ");
    COUNTER(native_invlpg, ", "); COUNTER(native_cr3, ", "); COUNTER(native_compute_cycles, ", ");
    COUNTER(pf_fixed, ", "); COUNTER(pf_guest, ", "); COUNTER(pf_bypassed, ", ");
    COUNTER(exit_hidden_fault, ", "); COUNTER(exit_guest_fault, ", ");
    COUNTER(exit_ptwrite_emulate, ", "); COUNTER(exit_cr3, ", "); COUNTER(tlb_flush, ", ");
    COUNTER(insn_emulation, ", "); COUNTER(mmu_pte_write, ", "); COUNTER(mmu_pte_updated, ", ");
    COUNTER(mmu_pde_zapped, ", "); COUNTER(mmu_flooded, ", "); COUNTER(mmu_shadow_zapped, ", ");
    COUNTER(mmu_cache_miss, "");
    printf("}}\n");
    return 0;
}
