/*
 * sbtrace: shadowbench's QEMU TCG plugin recording a 32-bit x86 guest's page-table traffic.
 * SPDX-License-Identifier: MIT
 *
 * Writes fixed 48-byte little-endian events (layout in bench/record/format.py, EVENT) to out=FILE;
 * a TABLE event is followed by the table's bytes. Needs (docs/recording.md):
 *   - guest RAM backed by a memfd (QEMU maps it; guest physical address = offset in pc.ram), to
 *     read table entries: memory callbacks run after the access, so a store's new value is there;
 *   - `-d mmu -D LOG` (log=LOG): QEMU logs each CR3 load there; read after each `mov %reg,%cr3`.
 * Plugin API 7.2 gives no registers: INVLPG's operand is inferred (the address the last pte store
 * mapped; flagged). Arguments: out=, log=, pae=0|1, ram=BYTES, mark=VA.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/mman.h>

#include "qemu-plugin.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

enum { EV_TABLE = 0, EV_UNTABLE = 1, EV_STORE = 2, EV_CR3 = 3, EV_INVLPG = 4, EV_WALK = 5,
       EV_MARK = 6 };
enum { SB_USER = 1, SB_WRITE = 2, SB_FETCH = 4, SB_INFERRED = 8, SB_LOCKED = 16, SB_SNAPSHOT = 32 };
/* instruction classes (bench/record/format.py INSN_NAMES) */
static const char *insn_names[] = {"other", "mov", "xchg", "cmpxchg", "cmpxchg8b", "or", "and",
                                   "btr", "bts", "stos", "movs", "xadd", "add", "sub", "push", NULL};

#define PAGE_OFFSET 0xC0000000u
#define DIRECT_END 0xF7800000u   /* below: the kernel's direct map (large global pages) */
#define LOWMEM_FAST 0x30000000u  /* va - PAGE_OFFSET is the pa for this much of it */
#define TLB_SETS 1024u

struct event {
    uint8_t kind, arg, insn, flags;
    uint32_t aux;
    uint64_t icount, pc, pa, va, value;
};

struct insn_info {
    uint32_t pc;
    uint8_t cls, flags, idx, n;
};

static FILE *out;
static int log_fd = -1;
static char log_buf[8192];
static size_t log_len;
static int pae;
static uint64_t ram_size, nframes;
static uint8_t *ram;
static uint32_t mark_va = 0x5B000000u;
static int recording, cr3_pending;
static uint64_t icount, n_marks_seen;
static uint64_t last_pte_va;
static int have_last_pte;

static uint8_t *level;         /* per frame: 0 not a table, 1 PT, 2 PD, 3 PDPT holder (PAE) */
static uint16_t *refs;         /* links from tracked parents; 0xFFFF: pinned (loaded in CR3) */
static uint32_t *vbase;        /* the virtual address the table's first entry maps */
static uint64_t **shadow;      /* levels >= 2: last seen entries */
static uint64_t (*slots)[2];   /* PAE: PDPT slots (32 bytes each) loaded into CR3 */

static struct { uint32_t vpn; uint32_t gen; uint8_t valid, dirty; } tlb[TLB_SETS];
static uint32_t tlb_gen = 1;

static struct insn_info *arena;
static size_t arena_left;

static void emit(uint8_t kind, uint8_t arg, uint8_t insn, uint8_t flags, uint32_t aux,
                 uint64_t ic, uint64_t pc, uint64_t pa, uint64_t va, uint64_t value)
{
    struct event e = {kind, arg, insn, flags, aux, ic, pc, pa, va, value};
    fwrite(&e, sizeof e, 1, out);
}

static int entry_bytes(void) { return pae ? 8 : 4; }
static int entries_of(int lvl) { return (pae && lvl == 3) ? 4 : (pae ? 512 : 1024); }

static uint64_t read_entry(uint64_t pa)
{
    if (pa + 8 > ram_size) return 0;
    if (pae) { uint64_t v; memcpy(&v, ram + pa, 8); return v; }
    uint32_t v; memcpy(&v, ram + pa, 4); return v;
}

/* The frame an entry at `lvl` links to as a table (0 if none: not present, or a large page). */
static uint64_t child_of(uint64_t e, int lvl)
{
    if (!(e & 1) || lvl < 2) return 0;
    if (lvl == 2 && (e & 0x80)) return 0;
    uint64_t f = (e & (pae ? 0x000FFFFFFFFFF000ull : 0xFFFFF000ull)) >> 12;
    return f < nframes ? f : 0;
}

static uint32_t span_of(int lvl)  /* bytes of virtual memory one entry of `lvl` maps */
{
    if (lvl == 1) return 4096;
    if (lvl == 2) return pae ? (1u << 21) : (1u << 22);
    return 1u << 30;
}

static void emit_table(uint64_t f, int lvl, uint64_t pa, uint32_t len, uint8_t flags)
{
    emit(EV_TABLE, lvl, 0, flags, len, icount, 0, pa, vbase[f], 0);
    fwrite(ram + pa, 1, len, out);
}

static void add_table(uint64_t f, int lvl, uint32_t vb);

static void drop_table(uint64_t f)
{
    int lvl = level[f];
    level[f] = 0;
    refs[f] = 0;
    if (recording) emit(EV_UNTABLE, lvl, 0, 0, 0, icount, 0, f << 12, vbase[f], 0);
    if (shadow[f]) {
        uint64_t *s = shadow[f];
        shadow[f] = NULL;
        for (int i = 0; i < (lvl == 3 ? 512 : entries_of(lvl)); i++) {
            uint64_t c = child_of(s[i], lvl);
            if (c && level[c] == lvl - 1 && refs[c] != 0xFFFF && --refs[c] == 0) drop_table(c);
        }
        free(s);
    }
}

/* PAE: a pdpt slot whose four entries are all clear (pgd_free's mop-up), or that takes a 1- or
 * 2-byte store, is no longer a pdpt; the frame stops being a table with its last slot. */
static void drop_slot(uint64_t f, unsigned slot)
{
    uint64_t *s = shadow[f];
    slots[f][slot >> 6] &= ~(1ull << (slot & 63));
    if (recording) emit(EV_UNTABLE, 3, 0, 0, 0, icount, 0, (f << 12) + slot * 32, 0, 0);
    for (unsigned i = slot * 4; i < slot * 4 + 4; i++) {
        uint64_t c = child_of(s[i], 3);
        s[i] = 0;
        if (c && level[c] == 2 && refs[c] != 0xFFFF && --refs[c] == 0) drop_table(c);
    }
    if (!slots[f][0] && !slots[f][1]) {
        level[f] = 0;
        refs[f] = 0;
        shadow[f] = NULL;
        free(s);
    }
}

static void link_children(uint64_t f, int lvl, uint64_t pa0, int n)
{
    uint64_t *s = shadow[f];
    int first = (int)((pa0 & 0xFFF) / entry_bytes());
    for (int i = first; i < first + n; i++) {
        s[i] = read_entry((f << 12) + (uint64_t)i * entry_bytes());
        uint64_t c = child_of(s[i], lvl);
        uint32_t vb = (lvl == 3) ? (uint32_t)(i - first) * span_of(3)
                                 : vbase[f] + (uint32_t)i * span_of(lvl);
        if (c) add_table(c, lvl - 1, vb);
    }
}

static void add_table(uint64_t f, int lvl, uint32_t vb)
{
    if (level[f] == lvl) {
        if (refs[f] != 0xFFFF) refs[f]++;
        return;
    }
    if (level[f]) drop_table(f);  /* reused at another level without our seeing it unlinked */
    level[f] = lvl;
    refs[f] = 1;
    vbase[f] = vb;
    if (recording) emit_table(f, lvl, f << 12, 4096, 0);
    if (lvl >= 2) {
        shadow[f] = calloc(1024, sizeof(uint64_t));
        link_children(f, lvl, f << 12, entries_of(lvl));
    }
}

static void load_cr3(uint64_t cr3)
{
    if (recording) emit(EV_CR3, 0, 0, 0, 0, icount, 0, cr3 & ~0xFFFull, 0, cr3);
    for (uint32_t i = 0; i < TLB_SETS; i++)   /* non-global (user) translations are flushed */
        if (tlb[i].vpn < (PAGE_OFFSET >> 12)) tlb[i].valid = 0;
    uint64_t f = cr3 >> 12;
    if (f >= nframes) return;
    if (pae) {
        unsigned slot = (cr3 >> 5) & 127;
        if (level[f] != 3) {
            if (level[f]) drop_table(f);
            level[f] = 3; refs[f] = 0xFFFF; vbase[f] = 0;
            shadow[f] = calloc(1024, sizeof(uint64_t));
            slots[f][0] = slots[f][1] = 0;
        }
        if (!(slots[f][slot >> 6] & (1ull << (slot & 63)))) {
            slots[f][slot >> 6] |= 1ull << (slot & 63);
            uint64_t pa = cr3 & ~31ull;
            if (recording) emit_table(f, 3, pa, 32, 0);
            link_children(f, 3, pa, 4);
        }
    } else if (level[f] != 2 || refs[f] != 0xFFFF) {
        if (level[f] != 2) add_table(f, 2, 0);
        refs[f] = 0xFFFF;
    }
}

static void snapshot(void)  /* recording starts: every tracked table as it is now */
{
    for (uint64_t f = 0; f < nframes; f++) {
        if (!level[f]) continue;
        if (level[f] == 3) {
            for (unsigned s = 0; s < 128; s++)
                if (slots[f][s >> 6] & (1ull << (s & 63)))
                    emit_table(f, 3, (f << 12) + s * 32, 32, SB_SNAPSHOT);
        } else {
            emit_table(f, level[f], f << 12, 4096, SB_SNAPSHOT);
        }
    }
}

static void read_cr3_log(void)
{
    for (;;) {
        ssize_t n = read(log_fd, log_buf + log_len, sizeof log_buf - 1 - log_len);
        if (n <= 0) break;
        log_len += (size_t)n;
        log_buf[log_len] = 0;
        char *line = log_buf, *nl;
        while ((nl = strchr(line, '\n'))) {
            *nl = 0;
            char *p = strstr(line, "CR3 update: CR3=");
            if (p) load_cr3(strtoull(p + 16, NULL, 16));
            line = nl + 1;
        }
        log_len = strlen(line);
        memmove(log_buf, line, log_len);
    }
}

static void map_ram(void)
{
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    while (maps && fgets(line, sizeof line, maps)) {
        unsigned long lo, hi;
        if (!strstr(line, "memfd:") || sscanf(line, "%lx-%lx", &lo, &hi) != 2) continue;
        if (hi - lo == ram_size) { ram = (uint8_t *)lo; break; }
    }
    if (maps) fclose(maps);
    if (!ram) {
        fprintf(stderr, "sbtrace: guest RAM memfd mapping of %" PRIu64 " bytes not found\n",
                ram_size);
        exit(1);
    }
}

static int tlb_miss(uint32_t va, int write)
{
    uint32_t vpn = va >> 12, i = vpn & (TLB_SETS - 1);
    int user = va < PAGE_OFFSET;
    if (tlb[i].valid && tlb[i].vpn == vpn && (!user || tlb[i].gen == tlb_gen)) {
        if (!write || tlb[i].dirty) return 0;
        tlb[i].dirty = 1;     /* first write through a clean translation walks to set D */
        return 1;
    }
    tlb[i].valid = 1; tlb[i].vpn = vpn; tlb[i].gen = tlb_gen; tlb[i].dirty = (uint8_t)write;
    return 1;
}

static inline uint64_t insn_icount(const struct insn_info *ii)
{
    return icount - ii->n + ii->idx;
}

static void mem_cb(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata)
{
    const struct insn_info *ii = udata;
    int store = qemu_plugin_mem_is_store(info);
    uint32_t va = (uint32_t)vaddr;
    int user = ii->pc < PAGE_OFFSET;
    (void)vcpu;
    if (user && store && va - mark_va < 4096) {
        if (va & 7) return;   /* the second half of an 8-byte mark */
        uint32_t phase = (va - mark_va) / 8;
        n_marks_seen++;
        if (phase && !recording) {
            recording = 1;
            for (uint32_t i = 0; i < TLB_SETS; i++) tlb[i].valid = 0;
            snapshot();
        }
        if (recording) emit(EV_MARK, 0, 0, 0, phase, insn_icount(ii), ii->pc, 0, va, phase);
        if (!phase) { recording = 0; fflush(out); }
        return;
    }
    if (recording && (va < PAGE_OFFSET || va >= DIRECT_END) && tlb_miss(va, store))
        emit(EV_WALK, 0, ii->cls, (user ? SB_USER : 0) | (store ? SB_WRITE : 0), 0,
             insn_icount(ii), ii->pc, 0, va, 0);
    if (!store || user) return;
    uint64_t pa;
    if (va - PAGE_OFFSET < LOWMEM_FAST) {
        pa = va - PAGE_OFFSET;
    } else {
        struct qemu_plugin_hwaddr *hw = qemu_plugin_get_hwaddr(info, vaddr);
        if (!hw || qemu_plugin_hwaddr_is_io(hw)) return;
        pa = qemu_plugin_hwaddr_phys_addr(hw);
    }
    uint64_t f = pa >> 12;
    if (f >= nframes || !level[f]) return;
    int lvl = level[f];
    if (lvl == 3) {
        unsigned slot = (pa >> 5) & 127;
        if (!(slots[f][slot >> 6] & (1ull << (slot & 63)))) return;
    }
    int width = 1 << qemu_plugin_mem_size_shift(info);
    if (recording) {
        uint64_t value = 0;
        if (pa + (unsigned)width <= ram_size) memcpy(&value, ram + pa, (size_t)width);
        emit(EV_STORE, (uint8_t)width, ii->cls, ii->flags, (uint32_t)lvl,
             insn_icount(ii), ii->pc, pa, va, value);
    }
    if (ii->cls == 9 || ii->cls == 10 || ii->cls == 14) {
        /* The kernel never writes a live table with string instructions, push or call: the frame was freed and reused (clear_page, a stack) without our seeing
         * its last unlink (e.g. a PTI user pgd's copy of the entries). It stops being a table. */
        if (lvl == 3) {
            drop_slot(f, (pa >> 5) & 127);
        } else {
            if (lvl == 1 && refs[f] != 0xFFFF) refs[f] = 1;
            drop_table(f);
        }
        return;
    }
    int eb = entry_bytes();
    uint64_t first = (pa & 0xFFF) / (uint64_t)eb, last = ((pa & 0xFFF) + width - 1) / eb;
    if (lvl == 1) {
        last_pte_va = vbase[f] + (uint32_t)first * 4096u;
        have_last_pte = 1;
        return;
    }
    for (uint64_t i = first; i <= last; i++) {
        uint64_t old = shadow[f][i], now = read_entry((f << 12) + i * eb);
        if (old == now) continue;
        uint64_t oc = child_of(old, lvl), nc = child_of(now, lvl);
        shadow[f][i] = now;
        if (oc == nc) continue;
        if (oc && level[oc] == lvl - 1 && refs[oc] != 0xFFFF && --refs[oc] == 0) drop_table(oc);
        if (nc) {
            uint32_t vb = lvl == 3 ? (uint32_t)(i % 4) * span_of(3) : vbase[f] + (uint32_t)i * span_of(lvl);
            add_table(nc, lvl - 1, vb);
        }
    }
    if (lvl == 3) {
        unsigned slot = (pa >> 5) & 127;
        uint64_t *e = shadow[f] + slot * 4;
        if (width < 4 || !((e[0] | e[1] | e[2] | e[3]) & 1)) drop_slot(f, slot);
    } else if (!pae && lvl == 2 && refs[f] == 0xFFFF && width != 4) {
        drop_table(f);   /* a freed pgd reused as data */
    }
}

static void cr3_cb(unsigned int vcpu, void *udata)
{
    (void)vcpu; (void)udata;
    cr3_pending = 1;
}

static void invlpg_cb(unsigned int vcpu, void *udata)
{
    const struct insn_info *ii = udata;
    (void)vcpu;
    if (!have_last_pte) return;
    uint32_t vpn = (uint32_t)last_pte_va >> 12;
    if (tlb[vpn & (TLB_SETS - 1)].vpn == vpn) tlb[vpn & (TLB_SETS - 1)].valid = 0;
    if (recording) emit(EV_INVLPG, 0, 0, SB_INFERRED, 0, insn_icount(ii), ii->pc, 0, last_pte_va, 0);
}

static void tb_cb(unsigned int vcpu, void *udata)
{
    uintptr_t packed = (uintptr_t)udata;
    uint32_t pc = (uint32_t)packed;
    (void)vcpu;
    icount += packed >> 32;
    if (!ram) map_ram();
    if (cr3_pending) {
        cr3_pending = 0;
        tlb_gen++;
        read_cr3_log();
    }
    if (recording && (pc < PAGE_OFFSET || pc >= DIRECT_END) && tlb_miss(pc, 0))
        emit(EV_WALK, 0, 0, (pc < PAGE_OFFSET ? SB_USER : 0) | SB_FETCH, 0, icount - (packed >> 32),
             pc, 0, pc, 0);
}

/* The instruction class of a memory-writing instruction, from its bytes (prefixes skipped). */
static uint8_t classify(const uint8_t *b, size_t len, uint8_t *flags)
{
    size_t i = 0;
    *flags = 0;
    while (i < len && (b[i] == 0xF0 || b[i] == 0xF2 || b[i] == 0xF3 || b[i] == 0x66 ||
                       b[i] == 0x2E || b[i] == 0x36 || b[i] == 0x3E || b[i] == 0x26 ||
                       b[i] == 0x64 || b[i] == 0x65)) {
        if (b[i] == 0xF0) *flags |= SB_LOCKED;
        i++;
    }
    if (i >= len) return 0;
    uint8_t op = b[i], reg = i + 1 < len ? (b[i + 1] >> 3) & 7 : 0;
    if (op == 0x0F && i + 1 < len) {
        uint8_t op2 = b[i + 1];
        reg = i + 2 < len ? (b[i + 2] >> 3) & 7 : 0;
        if (op2 == 0xB0 || op2 == 0xB1) return 3;                 /* cmpxchg */
        if (op2 == 0xC7 && reg == 1) return 4;                    /* cmpxchg8b */
        if (op2 == 0xB3 || (op2 == 0xBA && reg == 6)) return 7;   /* btr */
        if (op2 == 0xAB || (op2 == 0xBA && reg == 5)) return 8;   /* bts */
        if (op2 == 0xC0 || op2 == 0xC1) return 11;                /* xadd */
        if (op2 == 0xD6 || op2 == 0x7F || op2 == 0x29 || op2 == 0x11 || op2 == 0x13 ||
            op2 == 0x17 || op2 == 0xE7 || op2 == 0x2B)
            return 1;                                             /* SSE/MMX moves (movq...) */
        if (op2 == 0xA0 || op2 == 0xA8) return 14;                /* push fs/gs */
        return 0;
    }
    if (op == 0x88 || op == 0x89 || op == 0xC6 || op == 0xC7 || op == 0xA2 || op == 0xA3)
        return 1;                                                 /* mov */
    if (op == 0xDF && reg == 7) return 1;        /* fistpll: a 64-bit WRITE_ONCE on i386 */
    if (op == 0xDD && (reg == 2 || reg == 3)) return 1;           /* fstl/fstpl */
    if ((op >= 0x50 && op <= 0x57) || op == 0x68 || op == 0x6A || op == 0xE8 || op == 0x9C ||
        op == 0x60 || op == 0xC8 || op == 0x06 || op == 0x0E || op == 0x16 || op == 0x1E ||
        (op == 0xFF && (reg == 2 || reg == 6)))
        return 14;                                                /* push, call, enter */
    if (op == 0x86 || op == 0x87) return 2;                       /* xchg */
    if (op == 0x08 || op == 0x09) return 5;                       /* or */
    if (op == 0x20 || op == 0x21) return 6;                       /* and */
    if (op == 0xAA || op == 0xAB) return 9;                       /* stos */
    if (op == 0xA4 || op == 0xA5) return 10;                      /* movs */
    if (op == 0x00 || op == 0x01) return 12;                      /* add */
    if (op == 0x28 || op == 0x29) return 13;                      /* sub */
    if (op >= 0x80 && op <= 0x83) {
        static const uint8_t grp1[8] = {12, 5, 0, 0, 6, 13, 0, 0};
        return grp1[reg];
    }
    return 0;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    uint64_t pc0 = qemu_plugin_tb_vaddr(tb);
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_cb, QEMU_PLUGIN_CB_NO_REGS,
                                         (void *)(uintptr_t)((uint32_t)pc0 | ((uint64_t)n << 32)));
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        if (arena_left == 0) {
            arena = malloc(sizeof *arena * 65536);
            arena_left = 65536;
        }
        struct insn_info *ii = arena++;
        arena_left--;
        ii->pc = (uint32_t)qemu_plugin_insn_vaddr(insn);
        ii->idx = (uint8_t)i;
        ii->n = (uint8_t)n;
        const uint8_t *b = qemu_plugin_insn_data(insn);
        size_t len = qemu_plugin_insn_size(insn);
        ii->cls = classify(b, len, &ii->flags);
        if (len >= 3 && b[0] == 0x0F && b[1] == 0x22 && ((b[2] >> 3) & 7) == 3)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, cr3_cb, QEMU_PLUGIN_CB_NO_REGS, ii);
        else if (len >= 3 && b[0] == 0x0F && b[1] == 0x01 && ((b[2] >> 3) & 7) == 7 &&
                 (b[2] >> 6) != 3)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, invlpg_cb, QEMU_PLUGIN_CB_NO_REGS, ii);
        qemu_plugin_register_vcpu_mem_cb(insn, mem_cb, QEMU_PLUGIN_CB_NO_REGS,
                                         QEMU_PLUGIN_MEM_RW, ii);
    }
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    uint64_t tables = 0;
    (void)id; (void)p;
    for (uint64_t f = 0; f < nframes; f++) tables += level[f] != 0;
    fprintf(stderr, "sbtrace: %" PRIu64 " instructions, %" PRIu64 " marks, %" PRIu64
            " tables tracked at exit\n", icount, n_marks_seen, tables);
    if (out) fflush(out);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    const char *out_path = NULL, *log_path = NULL;
    (void)info;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strncmp(a, "out=", 4)) out_path = a + 4;
        else if (!strncmp(a, "log=", 4)) log_path = a + 4;
        else if (!strncmp(a, "pae=", 4)) pae = atoi(a + 4);
        else if (!strncmp(a, "ram=", 4)) ram_size = strtoull(a + 4, NULL, 0);
        else if (!strncmp(a, "mark=", 5)) mark_va = (uint32_t)strtoul(a + 5, NULL, 0);
        else { fprintf(stderr, "sbtrace: unknown argument %s\n", a); return -1; }
    }
    if (!out_path || !log_path || !ram_size) {
        fprintf(stderr, "sbtrace: out=, log= and ram= are required\n");
        return -1;
    }
    out = fopen(out_path, "wb");
    log_fd = open(log_path, O_RDONLY | O_CREAT, 0644);
    if (!out || log_fd < 0) { perror("sbtrace"); return -1; }
    setvbuf(out, NULL, _IOFBF, 1 << 20);
    nframes = ram_size >> 12;
    level = calloc(nframes, 1);
    refs = calloc(nframes, sizeof *refs);
    vbase = calloc(nframes, sizeof *vbase);
    shadow = calloc(nframes, sizeof *shadow);
    slots = calloc(nframes, sizeof *slots);
    if (!level || !refs || !vbase || !shadow || !slots) return -1;
    (void)insn_names;
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
