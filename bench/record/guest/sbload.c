/* sbload: the guest side of shadowbench's recording scenarios (static i386, run by the
 * scenario scripts in scenarios/). SPDX-License-Identifier: MIT
 *
 *   sbload reclaim MB PASSES     touch MB of anonymous memory PASSES times (phase 1: the first
 *                                pass faults it in; phase 2: the later passes, under the cgroup's
 *                                memory.max, reclaim and swap it)
 *   sbload fork-exit N KB        touch KB of anonymous memory, then fork N children one at a time;
 *                                each writes every page (copy-on-write) and exits (phase 1)
 *   sbload demand-paging MB      map MB of anonymous memory with MADV_NOHUGEPAGE, write each page
 *                                once (phase 1: one fault per 4 KiB page), unmap it (phase 2)
 *   sbload shared-file N KB      write a KB file on tmpfs; N children each map it MAP_SHARED and
 *                                write every page (phase 1: N ptes per page-cache page), then
 *                                unmap it and exit (phase 2)
 *   sbload mixed MB N KB N2 KB2 RMB PASSES
 *                                demand-paging MB (phases 1-2), fork-exit N KB (3 its setup,
 *                                4 the forks), shared-file N2 KB2 (5 writing the file, 6-7),
 *                                reclaim RMB PASSES (phases 8-9)
 *
 * demand-paging, shared-file and mixed print their proof: getrusage minor-fault counts around the
 * touch loops, /proc/vmstat deltas across each phase, and (shared-file) every child's
 * /proc/PID/smaps figures for the mapping while all children hold it. Keys are prefixed by the
 * part ("demand.", "fork.", "shared.", "reclaim.").
 *
 * Phases are marked by a store to MARK_VA + 8 * phase (the recorder's plugin watches that page);
 * phase 0 ends the recording. Prints what it did, one "key=value" line each.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>

#define MARK_VA 0x5B000000UL
#define PAGE 4096UL

static volatile unsigned long long *marks;

static void mark(int phase)
{
    marks[phase] = (unsigned long long)phase;
}

static char *map(unsigned long bytes)
{
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    return p;
}

static unsigned long touch(char *p, unsigned long bytes, int pass)
{
    unsigned long sum = 0;
    for (unsigned long off = 0; off < bytes; off += PAGE) {
        sum += (unsigned char)p[off];
        p[off] = (char)(pass + off / PAGE);
    }
    return sum;
}

/* ---- demand-paging, shared-file, mixed ---- */

struct vm { unsigned long long pgfault, thp, pgscan, pgsteal, pswpin, pswpout; };

static char vmbuf[32768];

static void vmstat(struct vm *v)
{
    memset(v, 0, sizeof *v);
    int fd = open("/proc/vmstat", O_RDONLY);
    if (fd < 0) { perror("/proc/vmstat"); exit(1); }
    size_t len = 0;
    ssize_t n;
    while (len < sizeof vmbuf - 1 && (n = read(fd, vmbuf + len, sizeof vmbuf - 1 - len)) > 0)
        len += (size_t)n;
    close(fd);
    vmbuf[len] = 0;
    for (char *line = vmbuf; *line; ) {
        char *nl = strchr(line, '\n');
        char *sp = strchr(line, ' ');
        if (sp && (!nl || sp < nl)) {
            unsigned long long x = strtoull(sp + 1, NULL, 10);
            size_t k = (size_t)(sp - line);
            if (k == 7 && !strncmp(line, "pgfault", 7)) v->pgfault = x;
            else if (k == 15 && !strncmp(line, "thp_fault_alloc", 15)) v->thp = x;
            else if (!strncmp(line, "pgscan_", 7)) v->pgscan += x;
            else if (!strncmp(line, "pgsteal_", 8)) v->pgsteal += x;
            else if (k == 6 && !strncmp(line, "pswpin", 6)) v->pswpin = x;
            else if (k == 7 && !strncmp(line, "pswpout", 7)) v->pswpout = x;
        }
        if (!nl) break;
        line = nl + 1;
    }
}

static void print_vm(const char *part, const struct vm *a, const struct vm *b)
{
    printf("%s.pgfault=%llu\n%s.thp_fault_alloc=%llu\n%s.pgscan=%llu\n%s.pgsteal=%llu\n"
           "%s.pswpin=%llu\n%s.pswpout=%llu\n", part, b->pgfault - a->pgfault, part,
           b->thp - a->thp, part, b->pgscan - a->pgscan, part, b->pgsteal - a->pgsteal, part,
           b->pswpin - a->pswpin, part, b->pswpout - a->pswpout);
}

static long minflt(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

/* Write each page of a fresh MADV_NOHUGEPAGE anonymous mapping once (a write fault on a pte that
 * was never present: do_anonymous_page, one per 4 KiB page), then unmap it. */
static void demand(unsigned long bytes, int phase)
{
    struct vm a, b;
    char *p = map(bytes);
    if (madvise(p, bytes, MADV_NOHUGEPAGE)) { perror("madvise"); exit(1); }
    vmstat(&a);
    mark(phase);
    long f0 = minflt();
    for (unsigned long off = 0; off < bytes; off += PAGE) p[off] = 1;
    long f1 = minflt();
    vmstat(&b);
    mark(phase + 1);
    munmap(p, bytes);
    printf("demand.va=%lu\ndemand.bytes=%lu\ndemand.pages=%lu\ndemand.minflt=%ld\n",
           (unsigned long)p, bytes, bytes / PAGE, f1 - f0);
    print_vm("demand", &a, &b);
}

/* fork-exit as a part of mixed: its setup (the parent's first touch) is phase `setup`. */
static int fork_exit(int n, unsigned long bytes, int setup, int phase)
{
    mark(setup);
    char *p = map(bytes);
    touch(p, bytes, 1);
    int done = 0;
    mark(phase);
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); exit(1); }
        if (pid == 0) { touch(p, bytes, 2 + i); _exit(0); }
        int status;
        if (waitpid(pid, &status, 0) == pid && WIFEXITED(status) && !WEXITSTATUS(status))
            done++;
    }
    munmap(p, bytes);
    printf("fork.children=%d\nfork.children_ok=%d\nfork.bytes=%lu\n", n, done, bytes);
    return done == n;
}

/* The mapping's Rss, Pss and Shared_Clean + Shared_Dirty (kB) in /proc/PID/smaps. */
static int smaps_of(pid_t pid, unsigned long start, long *rss, long *pss, long *shared)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/smaps", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[512];
    int in = 0, found = 0;
    *rss = *pss = *shared = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
            in = lo == start;
            found |= in;
            continue;
        }
        long kb;
        if (!in) continue;
        if (sscanf(line, "Rss: %ld kB", &kb) == 1) *rss = kb;
        else if (sscanf(line, "Pss: %ld kB", &kb) == 1) *pss = kb;
        else if (sscanf(line, "Shared_Clean: %ld kB", &kb) == 1) *shared += kb;
        else if (sscanf(line, "Shared_Dirty: %ld kB", &kb) == 1) *shared += kb;
    }
    fclose(f);
    return found;
}

/* N children each map one tmpfs file MAP_SHARED and write every page (do_shared_fault: one fault
 * per page, a pte to the same page-cache page in every child), wait until all have, then unmap
 * it and exit. The parent reads each child's smaps while all hold the mapping. */
static int shared_file(int n, unsigned long bytes, int setup, int phase)
{
    if (setup) mark(setup);   /* writing the file (standalone: before the recording starts) */
    const char *path = "/tmp/sb-shared";
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) { perror(path); exit(1); }
    static char page[PAGE];
    for (unsigned long off = 0; off < bytes; off += PAGE) {
        memset(page, (int)(off / PAGE), PAGE);
        if (write(fd, page, PAGE) != (ssize_t)PAGE) { perror("write"); exit(1); }
    }
    long *res = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (res == MAP_FAILED) { perror("mmap results"); exit(1); }
    memset(res, 0, PAGE);
    int ready[2], go[2];
    if (pipe(ready) || pipe(go)) { perror("pipe"); exit(1); }
    pid_t pids[64];
    if (n > 64) n = 64;
    struct vm a, b;
    vmstat(&a);
    mark(phase);
    for (int i = 0; i < n; i++) {
        pids[i] = fork();
        if (pids[i] < 0) { perror("fork"); exit(1); }
        if (pids[i] == 0) {
            close(ready[0]); close(go[1]);
            char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (p == MAP_FAILED) _exit(3);
            long f0 = minflt();
            for (unsigned long off = 0; off < bytes; off += PAGE) p[off] = (char)i;
            long f1 = minflt();
            res[2 * i] = f1 - f0;
            res[2 * i + 1] = (long)(unsigned long)p;
            char c = 1;
            if (write(ready[1], &c, 1) != 1) _exit(4);
            if (read(go[0], &c, 1) != 0) _exit(5);   /* EOF: the parent closed it */
            munmap(p, bytes);
            _exit(0);
        }
    }
    close(ready[1]); close(go[0]);
    for (int i = 0; i < n; i++) {
        char c;
        if (read(ready[0], &c, 1) != 1) { fprintf(stderr, "a child died before mapping\n"); exit(1); }
    }
    long rss_min = -1, shared_min = -1, pss_max = 0, flt_min = -1, flt_max = 0;
    int seen = 0, va_same = 1;
    for (int i = 0; i < n; i++) {
        long rss, pss, shared;
        if (!smaps_of(pids[i], (unsigned long)res[2 * i + 1], &rss, &pss, &shared)) continue;
        seen++;
        if (rss_min < 0 || rss < rss_min) rss_min = rss;
        if (shared_min < 0 || shared < shared_min) shared_min = shared;
        if (pss > pss_max) pss_max = pss;
        if (flt_min < 0 || res[2 * i] < flt_min) flt_min = res[2 * i];
        if (res[2 * i] > flt_max) flt_max = res[2 * i];
        va_same &= res[2 * i + 1] == res[1];
    }
    vmstat(&b);
    mark(phase + 1);
    close(go[1]);
    int done = 0;
    for (int i = 0; i < n; i++) {
        int status;
        if (waitpid(pids[i], &status, 0) == pids[i] && WIFEXITED(status) && !WEXITSTATUS(status))
            done++;
    }
    close(fd);
    unlink(path);
    printf("shared.va=%lu\nshared.va_same=%d\n", (unsigned long)res[1], va_same);
    printf("shared.children=%d\nshared.children_ok=%d\nshared.smaps_seen=%d\nshared.bytes=%lu\n"
           "shared.pages=%lu\nshared.minflt_min=%ld\nshared.minflt_max=%ld\nshared.rss_kb_min=%ld\n"
           "shared.shared_kb_min=%ld\nshared.pss_kb_max=%ld\n", n, done, seen, bytes, bytes / PAGE,
           flt_min, flt_max, rss_min, shared_min, pss_max);
    print_vm("shared", &a, &b);
    return done == n;
}

static void reclaim_part(unsigned long bytes, int passes, int phase)
{
    struct vm a, b;
    vmstat(&a);
    mark(phase);
    char *p = map(bytes);
    unsigned long sum = touch(p, bytes, 1);
    mark(phase + 1);
    for (int pass = 2; pass <= passes; pass++) sum += touch(p, bytes, pass);
    vmstat(&b);
    munmap(p, bytes);
    printf("reclaim.bytes=%lu\nreclaim.passes=%d\nreclaim.sum=%lu\n", bytes, passes, sum);
    print_vm("reclaim", &a, &b);
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: sbload SCENARIO ARGS\n"); return 2; }
    marks = mmap((void *)MARK_VA, PAGE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_POPULATE, -1, 0);
    if (marks == MAP_FAILED) { perror("mmap marks"); return 1; }
    if (!strcmp(argv[1], "reclaim") && argc == 4) {
        unsigned long bytes = strtoul(argv[2], NULL, 0) << 20;
        int passes = atoi(argv[3]);
        char *p = map(bytes);
        mark(1);
        unsigned long sum = touch(p, bytes, 1);
        mark(2);
        for (int pass = 2; pass <= passes; pass++) sum += touch(p, bytes, pass);
        mark(0);
        printf("scenario=reclaim\nbytes=%lu\npasses=%d\nsum=%lu\n", bytes, passes, sum);
        return 0;
    }
    if (!strcmp(argv[1], "fork-exit") && argc == 4) {
        int n = atoi(argv[2]);
        unsigned long bytes = strtoul(argv[3], NULL, 0) << 10;
        char *p = map(bytes);
        touch(p, bytes, 1);
        int done = 0;
        mark(1);
        for (int i = 0; i < n; i++) {
            pid_t pid = fork();
            if (pid < 0) { perror("fork"); return 1; }
            if (pid == 0) { touch(p, bytes, 2 + i); _exit(0); }
            int status;
            if (waitpid(pid, &status, 0) == pid && WIFEXITED(status) && !WEXITSTATUS(status))
                done++;
        }
        mark(0);
        printf("scenario=fork-exit\nchildren=%d\nchildren_ok=%d\nbytes=%lu\n", n, done, bytes);
        return done == n ? 0 : 1;
    }
    if (!strcmp(argv[1], "demand-paging") && argc == 3) {
        struct vm warm;
        vmstat(&warm);   /* the first read faults the buffer in, outside the phases */
        demand(strtoul(argv[2], NULL, 0) << 20, 1);
        mark(0);
        printf("scenario=demand-paging\n");
        return 0;
    }
    if (!strcmp(argv[1], "shared-file") && argc == 4) {
        struct vm warm;
        vmstat(&warm);
        int ok = shared_file(atoi(argv[2]), strtoul(argv[3], NULL, 0) << 10, 0, 1);
        mark(0);
        printf("scenario=shared-file\n");
        return ok ? 0 : 1;
    }
    if (!strcmp(argv[1], "mixed") && argc == 9) {
        struct vm warm;
        vmstat(&warm);
        demand(strtoul(argv[2], NULL, 0) << 20, 1);
        int ok = fork_exit(atoi(argv[3]), strtoul(argv[4], NULL, 0) << 10, 3, 4);
        ok &= shared_file(atoi(argv[5]), strtoul(argv[6], NULL, 0) << 10, 5, 6);
        reclaim_part(strtoul(argv[7], NULL, 0) << 20, atoi(argv[8]), 8);
        mark(0);
        printf("scenario=mixed\n");
        return ok ? 0 : 1;
    }
    fprintf(stderr, "sbload: unknown scenario or arguments: %s\n", argv[1]);
    return 2;
}
