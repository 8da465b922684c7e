"""x86-64 specifics.

vCPU setup (owned by the KVM/vCPU engineer, stable API):
  cpuid.vcpu_cpuid(supported, index, ncpus)  filtered CPUID entries with per-vCPU topology
  msrs.boot_msrs(kvm) / msrs.save_list(kvm)  MSRs to set at boot / to save in snapshots
  regs.setup_fpu(vcpu), regs.setup_lapic(vcpu), regs.setup_xcr0(vcpu, supported)
  regs.write_gdt(mem), regs.write_identity_page_tables(mem)
  regs.setup_long_mode(vcpu, mem, entry, stack=.., rsi=..)   64-bit, paging on
  regs.setup_protected_mode(vcpu, mem, entry, rbx=..)        32-bit flat, paging off (PVH)
Boot modules (ELF/PVH loader, boot params, ACPI/mptable) live next to these.
"""
