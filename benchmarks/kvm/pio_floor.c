/* The floor for a PIO exit round trip: the smallest possible KVM_RUN loop, in C.
 *
 * Built as a shared object at benchmark time and called through ctypes from the process
 * that owns the VM (KVM refuses KVM_RUN from another process: EIO). The caller has set
 * up the vCPU (64-bit mode, a guest doing `out dx, al` RCX times, then `hlt`).
 * Each round restores the registers and runs to HLT counting IO exits; the loop itself
 * touches no Python. Returns 0, or -errno / -exit_reason-1000 on a surprise.
 */
#include <errno.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <time.h>

int pio_floor(int fd, struct kvm_run *run, int rounds, long *exits, long *ns) {
    struct kvm_regs start;
    if (ioctl(fd, KVM_GET_REGS, &start) < 0) return -errno;
    for (int r = 0; r < rounds; r++) {
        if (ioctl(fd, KVM_SET_REGS, &start) < 0) return -errno;
        struct timespec a, b;
        long n = 0;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (;;) {
            if (ioctl(fd, KVM_RUN, 0) < 0) return -errno;
            if (run->exit_reason == KVM_EXIT_IO) { n++; continue; }
            if (run->exit_reason == KVM_EXIT_HLT) break;
            return -1000 - (int)run->exit_reason;
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        exits[r] = n;
        ns[r] = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
    }
    return 0;
}
