/*
 * A minimal KVM user: one VM, one vCPU in 64-bit long mode, a short loop, then an int3
 * that the guest's own IDT handles, then hlt.
 *
 * Prints one line per event and a final "RESULT ..." line; exit status:
 *   0  the int3 reached the guest's handler and the guest halted (hardware-style KVM)
 *   3  KVM_EXIT_INTERNAL_ERROR (what PVM does at the int3: emulation failure)
 *   1  anything else
 * Built by tests/e2e/test_lab_kvm.py at test time.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define MEM_SIZE 0x200000
#define GDT 0x1000
#define PML4 0x2000
#define PDPT 0x3000
#define PD 0x4000
#define IDT 0x5000
#define CODE 0x6000
#define HANDLER 0x7000
#define STACK_TOP 0x9000
#define PORT_HANDLER 0x11
#define PORT_DONE 0x10

static void die(const char *what)
{
	printf("RESULT failed %s: %s\n", what, strerror(errno));
	exit(1);
}

static void setup_memory(uint8_t *mem)
{
	uint64_t *gdt = (uint64_t *)(mem + GDT);
	gdt[0] = 0;
	gdt[1] = 0x00af9a000000ffffULL; /* 64-bit code, DPL 0 */
	gdt[2] = 0x00cf92000000ffffULL; /* data */

	uint64_t *pml4 = (uint64_t *)(mem + PML4), *pdpt = (uint64_t *)(mem + PDPT), *pd = (uint64_t *)(mem + PD);
	pml4[0] = PDPT | 3;
	pdpt[0] = PD | 3;
	pd[0] = 0x83; /* 2 MiB page at 0: present, writable, large */

	/* IDT entry 3 (#BP): 64-bit interrupt gate to HANDLER, DPL 3 so int3 may raise it. */
	uint8_t *e = mem + IDT + 3 * 16;
	e[0] = HANDLER & 0xff;
	e[1] = (HANDLER >> 8) & 0xff;
	e[2] = 0x08; /* selector */
	e[3] = 0;
	e[4] = 0; /* ist */
	e[5] = 0xee; /* present, DPL 3, type 0xe */
	e[6] = (HANDLER >> 16) & 0xff;
	e[7] = (HANDLER >> 24) & 0xff;

	static const uint8_t code[] = {
		0x48, 0xc7, 0xc1, 0xe8, 0x03, 0x00, 0x00, /* mov rcx, 1000 */
		0x48, 0xff, 0xc9,                         /* 1: dec rcx */
		0x75, 0xfb,                               /* jnz 1b */
		0xcc,                                     /* int3 */
		0xb0, 'D',                                /* mov al, 'D' */
		0xe6, PORT_DONE,                          /* out PORT_DONE, al */
		0xf4,                                     /* hlt */
	};
	static const uint8_t handler[] = {
		0xb0, 0x03,             /* mov al, 3 */
		0xe6, PORT_HANDLER,     /* out PORT_HANDLER, al */
		0x48, 0xcf,             /* iretq */
	};
	memcpy(mem + CODE, code, sizeof(code));
	memcpy(mem + HANDLER, handler, sizeof(handler));
}

static void setup_cpuid(int kvm, int vcpu)
{
	int n = 256;
	struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + n * sizeof(struct kvm_cpuid_entry2));
	cpuid->nent = n;
	if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0)
		die("KVM_GET_SUPPORTED_CPUID");
	if (ioctl(vcpu, KVM_SET_CPUID2, cpuid) < 0)
		die("KVM_SET_CPUID2");
	free(cpuid);
}

static void setup_long_mode(int vcpu)
{
	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS");
	struct kvm_segment cs = {
		.base = 0, .limit = 0xffffffff, .selector = 0x08, .type = 11,
		.present = 1, .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1,
	};
	struct kvm_segment ds = cs;
	ds.selector = 0x10;
	ds.type = 3;
	ds.l = 0;
	ds.db = 1;
	sregs.cs = cs;
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = ds;
	sregs.gdt.base = GDT;
	sregs.gdt.limit = 3 * 8 - 1;
	sregs.idt.base = IDT;
	sregs.idt.limit = 256 * 16 - 1;
	sregs.cr3 = PML4;
	sregs.cr4 = 1 << 5;                                  /* PAE */
	sregs.cr0 = 0x80000001 | (1 << 4) | (1 << 5);        /* PG, PE, ET, NE */
	sregs.efer = (1 << 8) | (1 << 10);                    /* LME, LMA */
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS");

	struct kvm_regs regs;
	memset(&regs, 0, sizeof(regs));
	regs.rip = CODE;
	regs.rsp = STACK_TOP;
	regs.rflags = 2;
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS");
}

int main(void)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("open /dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	setup_memory(mem);
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uintptr_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("KVM_SET_USER_MEMORY_REGION");
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < 0)
		die("KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");
	setup_cpuid(kvm, vcpu);
	setup_long_mode(vcpu);
	printf("vm and vcpu created\n");

	int handled = 0;
	for (int exits = 0; exits < 100; exits++) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0)
			die("KVM_RUN");
		switch (run->exit_reason) {
		case KVM_EXIT_IO: {
			uint8_t value = *((uint8_t *)run + run->io.data_offset);
			printf("exit io port=0x%x value=0x%x\n", run->io.port, value);
			if (run->io.port == PORT_HANDLER && value == 3)
				handled = 1;
			break;
		}
		case KVM_EXIT_HLT:
			if (handled) {
				printf("RESULT ok int3 handled by the guest IDT, then hlt\n");
				return 0;
			}
			printf("RESULT failed hlt before the int3 handler ran\n");
			return 1;
		case KVM_EXIT_INTERNAL_ERROR:
			printf("RESULT internal-error suberror=%u\n", run->internal.suberror);
			return 3;
		default:
			printf("RESULT failed exit_reason=%u\n", run->exit_reason);
			return 1;
		}
	}
	printf("RESULT failed too many exits\n");
	return 1;
}
