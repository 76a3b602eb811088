/* sbload: the guest side of shadowbench's recording scenarios (static i386, run by the
 * scenario scripts in scenarios/). SPDX-License-Identifier: MIT
 *
 *   sbload reclaim MB PASSES     touch MB of anonymous memory PASSES times (phase 1: the first
 *                                pass faults it in; phase 2: the later passes, under the cgroup's
 *                                memory.max, reclaim and swap it)
 *   sbload fork-exit N KB        touch KB of anonymous memory, then fork N children one at a time;
 *                                each writes every page (copy-on-write) and exits (phase 1)
 *
 * Phases are marked by a store to MARK_VA + 8 * phase (the recorder's plugin watches that page);
 * phase 0 ends the recording. Prints what it did, one "key=value" line each.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
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
    fprintf(stderr, "sbload: unknown scenario or arguments: %s\n", argv[1]);
    return 2;
}
