/* memslotd native shim: thin syscall wrappers for KVM guest_memfd memslots.
 *
 * The machine's kernel headers are 6.1 and lack every guest_memfd definition, so
 * this file carries its own copies (prefixed MSD_, checked by _Static_assert
 * against the 6.18 layouts of include/uapi/linux/kvm.h; cffi checks that the
 * cdef's structs match them). Policy lives in Python; this file only turns
 * syscalls into "value or -errno", and kvm_run into a struct (msd_read_run_exit).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

/* MSD_SHIM_VERSION is defined by build_shim.py: a checksum of this file and the header. */

/* ---- uAPI absent from the 6.1 headers ------------------------------------ */

struct msd_userspace_memory_region2 {
    uint32_t slot;
    uint32_t flags;
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
    uint64_t guest_memfd_offset;
    uint32_t guest_memfd;
    uint32_t pad1;
    uint64_t pad2[14];
};
_Static_assert(sizeof(struct msd_userspace_memory_region2) == 160, "region2 size");
_Static_assert(offsetof(struct msd_userspace_memory_region2, guest_memfd_offset) == 32, "region2 gmem offset");
_Static_assert(offsetof(struct msd_userspace_memory_region2, guest_memfd) == 40, "region2 gmem fd");
_Static_assert(offsetof(struct msd_userspace_memory_region2, pad2) == 48, "region2 pad2");

struct msd_create_guest_memfd {
    uint64_t size;
    uint64_t flags;
    uint64_t reserved[6];
};
_Static_assert(sizeof(struct msd_create_guest_memfd) == 64, "create_guest_memfd size");

struct msd_memory_attributes {
    uint64_t address;
    uint64_t size;
    uint64_t attributes;
    uint64_t flags;
};
_Static_assert(sizeof(struct msd_memory_attributes) == 32, "memory_attributes size");

#define MSD_IOC_SET_USER_MEMORY_REGION2 _IOW(KVMIO, 0x49, struct msd_userspace_memory_region2)
#define MSD_IOC_SET_MEMORY_ATTRIBUTES   _IOW(KVMIO, 0xd2, struct msd_memory_attributes)
#define MSD_IOC_CREATE_GUEST_MEMFD      _IOWR(KVMIO, 0xd4, struct msd_create_guest_memfd)
_Static_assert(MSD_IOC_SET_USER_MEMORY_REGION2 == 0x40A0AE49, "REGION2 ioctl number");
_Static_assert(MSD_IOC_SET_MEMORY_ATTRIBUTES == 0x4020AED2, "SET_MEMORY_ATTRIBUTES ioctl number");
_Static_assert(MSD_IOC_CREATE_GUEST_MEMFD == 0xC040AED4, "CREATE_GUEST_MEMFD ioctl number");

/* The 6.1 struct kvm_run already has the layout the kernel uses, but its exit
 * union predates the memory fault exit (6.8): that member is declared here. */
#define MSD_EXIT_MEMORY_FAULT 39
struct msd_memory_fault {
    uint64_t flags;
    uint64_t gpa;
    uint64_t size;
};
_Static_assert(offsetof(struct kvm_run, exit_reason) == 8, "kvm_run exit_reason");
_Static_assert(offsetof(struct kvm_run, mmio) == 32, "kvm_run union");
_Static_assert(offsetof(struct kvm_run, mmio) == offsetof(struct kvm_run, hypercall), "mmio starts the union");
_Static_assert(sizeof(struct msd_memory_fault) <= sizeof(((struct kvm_run *)0)->padding), "memory_fault fits");

/* What memslotd reads of kvm_run after KVM_RUN (see msd_read_run_exit). */
struct msd_run_exit {
    uint32_t reason;   /* exit_reason */
    uint8_t is_write;  /* mmio.is_write */
    uint64_t gpa;      /* mmio.phys_addr or memory_fault.gpa */
    uint64_t size;     /* mmio.len or memory_fault.size */
    uint64_t flags;    /* memory_fault.flags */
};

/* KVM_GET_SUPPORTED_CPUID's answer with room for its entries (as QEMU declares it). */
enum { MSD_CPUID_MAX_ENTRIES = 256 };
struct msd_cpuid {
    struct kvm_cpuid2 header;
    struct kvm_cpuid_entry2 entries[MSD_CPUID_MAX_ENTRIES];
};
_Static_assert(offsetof(struct msd_cpuid, entries) == offsetof(struct kvm_cpuid2, entries), "cpuid entries");

static int neg_errno(void) { return -errno; }

static int set_cloexec_or_close(int fd)
{
    if (fd < 0)
        return neg_errno();
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

/* ---- /dev/kvm ------------------------------------------------------------- */

int msd_open_kvm(void)
{
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    return fd < 0 ? neg_errno() : fd;
}

int msd_get_api_version(int kvm_fd)
{
    int r = ioctl(kvm_fd, KVM_GET_API_VERSION, 0);
    return r < 0 ? neg_errno() : r;
}

long msd_check_extension(int fd, unsigned long cap)
{
    int r = ioctl(fd, KVM_CHECK_EXTENSION, cap);
    return r < 0 ? neg_errno() : r;
}

int msd_get_vcpu_mmap_size(int kvm_fd)
{
    int r = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    return r < 0 ? neg_errno() : r;
}

/* ---- VM ------------------------------------------------------------------- */

int msd_create_vm(int kvm_fd, unsigned long type)
{
    return set_cloexec_or_close(ioctl(kvm_fd, KVM_CREATE_VM, type));
}

int msd_create_guest_memfd(int vm_fd, uint64_t size, uint64_t flags)
{
    struct msd_create_guest_memfd arg;
    memset(&arg, 0, sizeof(arg));
    arg.size = size;
    arg.flags = flags;
    /* The kernel creates the fd without O_CLOEXEC (get_unused_fd_flags(0)). */
    return set_cloexec_or_close(ioctl(vm_fd, MSD_IOC_CREATE_GUEST_MEMFD, &arg));
}

int msd_set_user_memory_region2(int vm_fd, uint32_t slot, uint32_t flags, uint64_t gpa,
                                uint64_t size, uint64_t uaddr, uint64_t gmem_offset,
                                uint32_t gmem_fd)
{
    struct msd_userspace_memory_region2 r;
    memset(&r, 0, sizeof(r)); /* pad1/pad2 are not checked by the kernel: zero them */
    r.slot = slot;
    r.flags = flags;
    r.guest_phys_addr = gpa;
    r.memory_size = size;
    r.userspace_addr = uaddr;
    r.guest_memfd_offset = gmem_offset;
    r.guest_memfd = gmem_fd;
    return ioctl(vm_fd, MSD_IOC_SET_USER_MEMORY_REGION2, &r) < 0 ? neg_errno() : 0;
}

/* A memslot batch: n regions, each passed to the kernel as it is (memory_size 0
 * deletes; the caller zeroes the pads). Applied in order, stopping at the first
 * failure; returns how many were applied and stores -errno of the failing one
 * in *err (0 when all were). One call for the whole batch keeps Python off the
 * CPU between the ioctls. */
int msd_set_user_memory_regions(int vm_fd, const struct msd_userspace_memory_region2 *regions, int n, int *err)
{
    *err = 0;
    for (int i = 0; i < n; i++) {
        if (ioctl(vm_fd, MSD_IOC_SET_USER_MEMORY_REGION2, &regions[i]) < 0) {
            *err = neg_errno();
            return i;
        }
    }
    return n;
}

int msd_set_memory_attributes(int vm_fd, uint64_t address, uint64_t size, uint64_t attributes)
{
    struct msd_memory_attributes a = { address, size, attributes, 0 };
    return ioctl(vm_fd, MSD_IOC_SET_MEMORY_ATTRIBUTES, &a) < 0 ? neg_errno() : 0;
}

/* KVM_GET_DIRTY_LOG: copies the slot's bitmap (one bit per page, 64-bit aligned) into
 * bitmap and re-arms write tracking (no manual-protect cap is enabled). */
int msd_get_dirty_log(int vm_fd, uint32_t slot, void *bitmap)
{
    struct kvm_dirty_log log;
    memset(&log, 0, sizeof(log));
    log.slot = slot;
    log.dirty_bitmap = bitmap;
    return ioctl(vm_fd, KVM_GET_DIRTY_LOG, &log) < 0 ? neg_errno() : 0;
}

/* ---- files and mappings --------------------------------------------------- */

int msd_fallocate(int fd, int mode, int64_t offset, int64_t len)
{
    return fallocate(fd, mode, offset, len) < 0 ? neg_errno() : 0;
}

int msd_memfd_create(const char *name, unsigned int flags)
{
    int fd = memfd_create(name, flags | MFD_CLOEXEC);
    return fd < 0 ? neg_errno() : fd;
}

int msd_ftruncate(int fd, int64_t size)
{
    return ftruncate(fd, size) < 0 ? neg_errno() : 0;
}

int msd_mmap(int fd, uint64_t len, int prot, int flags, int64_t offset, void **addr)
{
    void *p = mmap(NULL, len, prot, flags, fd, offset);
    if (p == MAP_FAILED)
        return neg_errno();
    *addr = p;
    return 0;
}

int msd_munmap(void *addr, uint64_t len)
{
    return munmap(addr, len) < 0 ? neg_errno() : 0;
}

int msd_close(int fd)
{
    return close(fd) < 0 ? neg_errno() : 0;
}

/* ---- guarded copy --------------------------------------------------------- */
/* A guest_memfd mapping SIGBUSes on pages the host may not fault (no
 * INIT_SHARED, past EOF, hwpoison). CPython cannot survive that, so every host
 * access to guest memory goes through here: the SIGBUS handler jumps back to
 * the copying thread, which returns -EFAULT. Other SIGBUSes are passed on. */

/* volatile + barriers: without them the compiler drops the store before memcpy
 * (memcpy does not read it), and the handler finds no guard. */
static __thread sigjmp_buf *volatile guard_jmp;
static struct sigaction previous_sigbus;
static pthread_once_t guard_once = PTHREAD_ONCE_INIT;

static void sigbus_handler(int sig, siginfo_t *info, void *uctx)
{
    if (guard_jmp)
        siglongjmp(*guard_jmp, 1);
    if (previous_sigbus.sa_flags & SA_SIGINFO && previous_sigbus.sa_sigaction) {
        previous_sigbus.sa_sigaction(sig, info, uctx);
        return;
    }
    if (previous_sigbus.sa_handler != SIG_DFL && previous_sigbus.sa_handler != SIG_IGN) {
        previous_sigbus.sa_handler(sig);
        return;
    }
    signal(SIGBUS, SIG_DFL);
    raise(SIGBUS);
}

static void install_sigbus_guard(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = sigbus_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &previous_sigbus);
}

int msd_guarded_copy(void *dst, const void *src, uint64_t len)
{
    sigjmp_buf jmp;
    pthread_once(&guard_once, install_sigbus_guard);
    if (sigsetjmp(jmp, 1)) {
        guard_jmp = NULL;
        return -EFAULT;
    }
    guard_jmp = &jmp;
    __asm__ __volatile__("" ::: "memory");
    memcpy(dst, src, len);
    __asm__ __volatile__("" ::: "memory");
    guard_jmp = NULL;
    return 0;
}

/* ---- vCPU ----------------------------------------------------------------- */

int msd_create_vcpu(int vm_fd, unsigned long id)
{
    return set_cloexec_or_close(ioctl(vm_fd, KVM_CREATE_VCPU, id));
}

/* Long mode straight from KVM_SET_SREGS (no boot code): paging with PAE,
 * LME|LMA, a flat 64-bit code segment and flat data segments. */
int msd_vcpu_enter_long_mode(int vcpu_fd, uint64_t cr3)
{
    struct kvm_sregs s;
    struct kvm_segment code = {
        .base = 0, .limit = 0xffffffff, .selector = 8, .type = 11,
        .present = 1, .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1,
    };
    struct kvm_segment data = code;
    if (ioctl(vcpu_fd, KVM_GET_SREGS, &s) < 0)
        return neg_errno();
    data.selector = 16;
    data.type = 3;
    data.l = 0;
    data.db = 1;
    s.cs = code;
    s.ds = s.es = s.fs = s.gs = s.ss = data;
    s.cr0 = 0x80000011; /* PG | ET | PE */
    s.cr3 = cr3;
    s.cr4 = 0x20;       /* PAE */
    s.efer = 0x500;     /* LME | LMA */
    return ioctl(vcpu_fd, KVM_SET_SREGS, &s) < 0 ? neg_errno() : 0;
}

/* KVM_GET_SUPPORTED_CPUID on /dev/kvm, read once and given to every vCPU with
 * KVM_SET_CPUID2: without it the guest's MAXPHYADDR is 36 bits and page tables
 * pointing above 64 GiB fault with reserved bits set. Returns the guest's
 * MAXPHYADDR (leaf 0x80000008, EAX[7:0]; 36 if absent). */
int msd_get_supported_cpuid(int kvm_fd, struct msd_cpuid *cpuid)
{
    uint32_t i;
    int bits = 36;
    memset(cpuid, 0, sizeof(*cpuid));
    cpuid->header.nent = MSD_CPUID_MAX_ENTRIES;
    if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, cpuid) < 0)
        return neg_errno();
    for (i = 0; i < cpuid->header.nent; i++)
        if (cpuid->entries[i].function == 0x80000008)
            bits = (int)(cpuid->entries[i].eax & 0xff);
    return bits;
}

int msd_vcpu_set_cpuid2(int vcpu_fd, const struct msd_cpuid *cpuid)
{
    return ioctl(vcpu_fd, KVM_SET_CPUID2, cpuid) < 0 ? neg_errno() : 0;
}

int msd_vcpu_set_regs(int vcpu_fd, uint64_t rip, uint64_t rsi, uint64_t rdi, uint64_t rcx,
                      uint64_t rsp)
{
    struct kvm_regs r;
    memset(&r, 0, sizeof(r));
    r.rip = rip;
    r.rsi = rsi;
    r.rdi = rdi;
    r.rcx = rcx;
    r.rsp = rsp;
    r.rflags = 0x2;
    return ioctl(vcpu_fd, KVM_SET_REGS, &r) < 0 ? neg_errno() : 0;
}

/* KVM_RUN bounded by a per-thread timer: the timer signal (no SA_RESTART)
 * makes KVM_RUN return -EINTR, so a runaway guest cannot hang the caller.
 * The timer re-fires every timeout_ms in case the first signal landed just
 * before the ioctl entered the guest. */
static void timer_signal_noop(int sig) { (void)sig; }
static pthread_once_t timer_once = PTHREAD_ONCE_INIT;
static int timer_signo;

static void install_timer_signal(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = timer_signal_noop;
    sigemptyset(&sa.sa_mask);
    timer_signo = SIGRTMIN + 3;
    sigaction(timer_signo, &sa, NULL);
}

int msd_vcpu_run(int vcpu_fd, int timeout_ms)
{
    struct sigevent sev;
    struct itimerspec its;
    timer_t timer;
    int r, err;

    pthread_once(&timer_once, install_timer_signal);
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = timer_signo;
    sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    if (timer_create(CLOCK_MONOTONIC, &sev, &timer) < 0)
        return neg_errno();
    its.it_value.tv_sec = timeout_ms / 1000;
    its.it_value.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
    its.it_interval = its.it_value;
    if (timer_settime(timer, 0, &its, NULL) < 0) { /* unarmed, KVM_RUN could hang */
        err = errno;
        timer_delete(timer);
        return -err;
    }
    r = ioctl(vcpu_fd, KVM_RUN, 0);
    err = errno;
    timer_delete(timer);
    return r < 0 ? -err : 0;
}

/* The exit KVM_RUN left in the vCPU's kvm_run page: the reason and, for the two
 * exits the probe meets, their union member. memory_fault is valid only when
 * KVM_RUN failed with EFAULT or EHWPOISON (api.rst); the caller knows which. */
void msd_read_run_exit(const void *run_page, struct msd_run_exit *out)
{
    const struct kvm_run *run = run_page;
    memset(out, 0, sizeof(*out));
    out->reason = run->exit_reason;
    if (run->exit_reason == KVM_EXIT_MMIO) {
        out->gpa = run->mmio.phys_addr;
        out->size = run->mmio.len;
        out->is_write = run->mmio.is_write;
    } else if (run->exit_reason == MSD_EXIT_MEMORY_FAULT) {
        const struct msd_memory_fault *fault = (const void *)&run->mmio;
        out->flags = fault->flags;
        out->gpa = fault->gpa;
        out->size = fault->size;
    }
}

/* KVM completes an MMIO exit only on the next KVM_RUN; with immediate_exit set
 * that run returns EINTR right after (api.rst, "immediate_exit"). */
void msd_run_set_immediate_exit(void *run_page, int value)
{
    ((struct kvm_run *)run_page)->immediate_exit = value ? 1 : 0;
}

/* exit_reason is only meaningful if KVM writes it during the next run: clear it first, so a
 * failed KVM_RUN that filled in no exit is never read as the previous one. */
void msd_run_clear_exit_reason(void *run_page)
{
    ((struct kvm_run *)run_page)->exit_reason = 0;
}
