"""Host DNS servers for guests: loopback stubs skipped, resolved's upstreams as the fallback."""
from __future__ import annotations

from vmm.network import dns


def test_parse_skips_loopback_ipv6_and_junk():
    text = "# c\nnameserver 127.0.0.53\nnameserver 192.0.2.53 # x\nnameserver fd00::1\nnameserver bad\n" \
           "search example.org\nnameserver 198.51.100.1\nnameserver 192.0.2.53\n"
    assert dns.parse_nameservers(text) == ["192.0.2.53", "198.51.100.1"]


def test_stub_only_falls_back_to_resolved_upstreams(tmp_path):
    resolv, upstream = tmp_path / "resolv.conf", tmp_path / "upstream.conf"
    resolv.write_text("nameserver 127.0.0.53\n")
    upstream.write_text("nameserver 203.0.113.9\n")
    assert dns.host_nameservers(resolv, upstream) == ["203.0.113.9"]
    assert dns.host_nameservers(resolv, tmp_path / "missing") == []
    resolv.write_text("nameserver 192.0.2.1\n")
    assert dns.host_nameservers(resolv, upstream) == ["192.0.2.1"]
