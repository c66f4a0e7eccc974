/* memslotd native shim: the cdef fed to cffi (API mode).
 *
 * One msd_<verb>_<object>() per syscall. Each returns the new fd, a value, or 0
 * on success, and -errno on failure: nothing raises in C, nothing keeps state
 * beyond the process-wide SIGBUS guard. Every fd created here is close-on-exec.
 */

#define MSD_SHIM_VERSION ...

/* KVM_GET_SUPPORTED_CPUID's answer; its size comes from the compiler */
struct msd_cpuid { ...; };

/* KVM_SET_USER_MEMORY_REGION2's argument (the batch is an array of them) */
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

/* what memslotd reads of kvm_run after KVM_RUN (msd_read_run_exit) */
struct msd_run_exit {
    uint32_t reason;
    uint8_t is_write;
    uint64_t gpa;
    uint64_t size;
    uint64_t flags;
};

/* /dev/kvm and capabilities */
int msd_open_kvm(void);
int msd_get_api_version(int);
long msd_check_extension(int, unsigned long);
int msd_get_vcpu_mmap_size(int);
int msd_get_supported_cpuid(int, struct msd_cpuid *);  /* returns the guest's MAXPHYADDR */

/* VM */
int msd_create_vm(int, unsigned long);
int msd_create_guest_memfd(int, uint64_t, uint64_t);
int msd_set_user_memory_region2(int, uint32_t, uint32_t, uint64_t, uint64_t,
                                uint64_t, uint64_t, uint32_t);
int msd_set_user_memory_regions(int, const struct msd_userspace_memory_region2 *, int, int *);
int msd_set_memory_attributes(int, uint64_t, uint64_t, uint64_t);
int msd_get_dirty_log(int, uint32_t, void *);

/* files and mappings */
int msd_fallocate(int, int, int64_t, int64_t);
int msd_memfd_create(const char *, unsigned int);
int msd_ftruncate(int, int64_t);
int msd_mmap(int, uint64_t, int, int, int64_t, void **);
int msd_munmap(void *, uint64_t);
int msd_close(int);

/* guarded guest-memory access: a SIGBUS while copying becomes -EFAULT */
int msd_guarded_copy(void *, const void *, uint64_t);

/* vCPU */
int msd_create_vcpu(int, unsigned long);
int msd_vcpu_enter_long_mode(int, uint64_t);
int msd_vcpu_set_cpuid2(int, const struct msd_cpuid *);
int msd_vcpu_set_regs(int, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);
int msd_vcpu_run(int, int);

/* the vCPU's kvm_run page (mmap of the vCPU fd) */
void msd_read_run_exit(const void *, struct msd_run_exit *);
void msd_run_set_immediate_exit(void *, int);
void msd_run_clear_exit_reason(void *);
