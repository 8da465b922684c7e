"""boot_params (zero page) at the offsets Documentation/arch/x86/zero-page.rst gives,
e820 maps, and PVH start info."""
import struct

from vmm.arch.x86 import bootparams, e820, pvh

GiB = 1 << 30
MiB = 1 << 20


def test_zero_page_fields_at_documented_offsets():
    mem_map = e820.memory_map([(0, 512 * MiB)])
    page = bootparams.zero_page(cmdline_addr=0x20000, e820=mem_map,
                                initrd=(0x1F000000, 0x123456), rsdp_addr=0xE0000)
    assert len(page) == 4096
    assert struct.unpack_from("<Q", page, 0x070)[0] == 0xE0000
    assert page[0x1E8] == 3
    assert struct.unpack_from("<H", page, 0x1FE)[0] == 0xAA55
    assert page[0x202:0x206] == b"HdrS"
    assert page[0x210] == 0xFF
    assert page[0x211] & 0x01  # LOADED_HIGH
    assert struct.unpack_from("<I", page, 0x218)[0] == 0x1F000000
    assert struct.unpack_from("<I", page, 0x21C)[0] == 0x123456
    assert struct.unpack_from("<I", page, 0x228)[0] == 0x20000
    entries = [struct.unpack_from("<QQI", page, 0x2D0 + 20 * i) for i in range(3)]
    assert entries == mem_map


def test_zero_page_keeps_the_kernel_setup_header_and_splits_high_addresses():
    header = bytearray(0x80)
    header[0] = 27                                   # setup_sects
    struct.pack_into("<H", header, 0x206 - 0x1F1, 0x020F)
    struct.pack_into("<I", header, 0x22C - 0x1F1, 0x7FFFFFFF)
    page = bootparams.zero_page(cmdline_addr=0x1_2000_0000, e820=[], initrd=(0x1_0000_0000, 5 << 32),
                                setup_header=bytes(header))
    assert page[0x1F1] == 27
    assert struct.unpack_from("<H", page, 0x206)[0] == 0x020F
    assert struct.unpack_from("<I", page, 0x228)[0] == 0x2000_0000
    assert struct.unpack_from("<I", page, 0x0C8)[0] == 1
    assert struct.unpack_from("<I", page, 0x0C0)[0] == 1
    assert struct.unpack_from("<I", page, 0x0C4)[0] == 5
    assert bootparams.initrd_addr_max(bytes(header)) == 0x7FFFFFFF
    assert bootparams.initrd_addr_max(b"") == 0xFFFFFFFF


def test_e820_small_and_across_the_mmio_hole():
    assert e820.memory_map([(0, 128 * MiB)]) == [
        (0, 0x9FC00, 1), (0x9FC00, 0x100000 - 0x9FC00, 2), (0x100000, 128 * MiB - 0x100000, 1)]
    five = e820.memory_map([(0, 3 * GiB), (4 * GiB, 2 * GiB)])
    assert five[-1] == (4 * GiB, 2 * GiB, 1)
    assert sum(s for _, s, t in five if t == 1) == 5 * GiB - (0x100000 - 0x9FC00)
    assert len(e820.pack_boot_params_entries(five)) == 20 * len(five)


def test_pvh_start_info_layout():
    info = pvh.start_info(cmdline_addr=0x20000, memmap_addr=0x6080, memmap_entries=4,
                          rsdp_addr=0xE0000, modlist_addr=0x6040, nr_modules=1)
    assert len(info) == pvh.START_INFO_SIZE == 56
    magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, n, _ = struct.unpack(
        "<IIIIQQQQII", info)
    assert (magic, version, flags, nr_modules) == (0x336EC578, 1, 0, 1)
    assert (modlist, cmdline, rsdp, memmap, n) == (0x6040, 0x20000, 0xE0000, 0x6080, 4)
    assert struct.unpack_from("<Q", info, 0x10)[0] == 0x6040   # modlist_paddr offset
    assert struct.unpack_from("<Q", info, 0x28)[0] == 0x6080   # memmap_paddr offset
    assert pvh.module_entry(0x1000, 0x2000) == struct.pack("<QQQQ", 0x1000, 0x2000, 0, 0)
    mm = pvh.memmap([(0, 0x9FC00, 1), (0x100000, 0x1000, 1)])
    assert len(mm) == 48 and struct.unpack_from("<QQII", mm, 24) == (0x100000, 0x1000, 1, 0)


def test_pvh_without_modules_has_no_modlist():
    info = pvh.start_info(cmdline_addr=1, memmap_addr=2, memmap_entries=3, modlist_addr=0x6040)
    assert struct.unpack_from("<IQ", info, 12) == (0, 0)
