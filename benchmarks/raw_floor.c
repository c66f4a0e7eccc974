/* Raw floor: KVM_SET_USER_MEMORY_REGION2 create + delete of a 2 MiB slot, N times.
 * Prints one line of JSON with the create and delete latencies (ns). Built by `make bench`. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

struct region2 { uint32_t slot, flags; uint64_t gpa, size, uaddr, gmem_offset; uint32_t gmem, pad1; uint64_t pad2[14]; };
#define SET_REGION2 _IOW(KVMIO, 0x49, struct region2)

static uint64_t now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000ull + t.tv_nsec; }
static int cmp(const void *a, const void *b) { uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b; return x < y ? -1 : x > y; }

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 10000, existing = argc > 2 ? atoi(argv[2]) : 0;
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC), vm = ioctl(kvm, KVM_CREATE_VM, 0);
    size_t size = 2 << 20;
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    uint64_t *c = calloc(n, 8), *d = calloc(n, 8);
    struct region2 r;
    if (kvm < 0 || vm < 0 || mem == MAP_FAILED) { perror("setup"); return 1; }
    for (int i = 0; i < existing; i++) { /* background slots: 4 KiB each, far away */
        memset(&r, 0, sizeof r); r.slot = 100 + i; r.gpa = (1ull << 40) + (uint64_t)i * 8192; r.size = 4096; r.uaddr = (uint64_t)mem;
        if (ioctl(vm, SET_REGION2, &r)) { perror("existing"); return 1; }
    }
    if (argc > 3 && !strcmp(argv[3], "batch")) { /* n creates of distinct slots, then n deletes: per-slot mean */
        void *big = mmap(NULL, (size_t)n * size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        uint64_t t0 = now();
        for (int i = 0; i < n; i++) {
            memset(&r, 0, sizeof r); r.slot = i; r.gpa = (1ull << 32) + (uint64_t)i * size; r.size = size;
            r.uaddr = (uint64_t)big + (uint64_t)i * size;
            if (ioctl(vm, SET_REGION2, &r)) { perror("batch create"); return 1; }
        }
        uint64_t t1 = now();
        for (int i = 0; i < n; i++) {
            memset(&r, 0, sizeof r); r.slot = i;
            if (ioctl(vm, SET_REGION2, &r)) { perror("batch delete"); return 1; }
        }
        uint64_t t2 = now();
        printf("{\"n\": %d, \"create_mean_ns\": %llu, \"delete_mean_ns\": %llu}\n", n,
               (unsigned long long)((t1 - t0) / n), (unsigned long long)((t2 - t1) / n));
        return 0;
    }
    for (int i = 0; i < n; i++) {
        memset(&r, 0, sizeof r); r.slot = 1; r.gpa = 1ull << 32; r.size = size; r.uaddr = (uint64_t)mem;
        uint64_t t0 = now();
        if (ioctl(vm, SET_REGION2, &r)) { perror("create"); return 1; }
        uint64_t t1 = now();
        r.size = 0;
        if (ioctl(vm, SET_REGION2, &r)) { perror("delete"); return 1; }
        uint64_t t2 = now();
        c[i] = t1 - t0; d[i] = t2 - t1;
    }
    qsort(c, n, 8, cmp); qsort(d, n, 8, cmp);
    printf("{\"n\": %d, \"existing\": %d, \"create_p50_ns\": %llu, \"create_p99_ns\": %llu, \"delete_p50_ns\": %llu, \"delete_p99_ns\": %llu}\n",
           n, existing, (unsigned long long)c[n / 2], (unsigned long long)c[n * 99 / 100],
           (unsigned long long)d[n / 2], (unsigned long long)d[n * 99 / 100]);
    return 0;
}
