"""The boot config writer: OCI merge rules, encoding, command-line tokens."""
from __future__ import annotations

import pytest

from vmm.guest.bootconfig import BootConfig, merge_env, parse, pct_encode
from vmm.guest.errors import BootConfigError

IMAGE = {"config": {"Entrypoint": ["/entry"], "Cmd": ["serve", "--port", "80"],
                    "Env": ["PATH=/usr/bin:/bin", "A=1"], "WorkingDir": "/app", "User": "web:web"}}


def test_image_config_alone():
    c = BootConfig.from_oci(IMAGE)
    assert c.argv == ["/entry", "serve", "--port", "80"]
    assert c.env == ["PATH=/usr/bin:/bin", "A=1"]
    assert (c.workdir, c.user) == ("/app", "web:web")


def test_command_override_keeps_entrypoint():
    assert BootConfig.from_oci(IMAGE, command=["sh"]).argv == ["/entry", "sh"]


def test_entrypoint_override_drops_image_cmd():
    assert BootConfig.from_oci(IMAGE, entrypoint=["/bin/sh"]).argv == ["/bin/sh"]
    assert BootConfig.from_oci(IMAGE, entrypoint=["/bin/sh"], command=["-c", "x"]).argv == ["/bin/sh", "-c", "x"]


def test_overrides_env_workdir_user():
    c = BootConfig.from_oci(IMAGE, env={"A": "2", "B": "3"}, workdir="/w", user="1000:1000")
    assert c.env == ["PATH=/usr/bin:/bin", "A=2", "B=3"]
    assert (c.workdir, c.user) == ("/w", "1000:1000")


def test_unwrapped_config_and_empty_command():
    assert BootConfig.from_oci({"Cmd": ["true"]}).argv == ["true"]
    with pytest.raises(BootConfigError):
        BootConfig.from_oci({})


def test_merge_env_later_wins():
    assert merge_env(["A=1", "B=2"], ["A=3"]) == ["B=2", "A=3"]


def test_bad_env_entry():
    with pytest.raises(BootConfigError):
        BootConfig(argv=["x"], env=["NOEQUALS"])


def test_pct_encode_makes_values_line_and_token_safe():
    assert pct_encode("a b\n%=é") == "a%20b%0A%25=%C3%A9"
    with pytest.raises(BootConfigError):
        pct_encode("a\0b")


def test_render_round_trips_and_lists_repeat():
    c = BootConfig(argv=["sh", "-c", "echo 'a b'\nexit 3"], env=["X=1 2"], dns=["1.1.1.1", "8.8.8.8"],
                   ip="10.0.0.2/24", gw="10.0.0.1", ssh=True, stdio="vsock", user="app")
    pairs = parse(c.render())
    assert pairs[0] == ("version", "1")
    assert [v for k, v in pairs if k == "arg"] == c.argv
    assert [v for k, v in pairs if k == "dns"] == c.dns
    assert ("env", "X=1 2") in pairs and ("ssh", "1") in pairs and ("stdio", "vsock") in pairs
    assert all(b not in line for line in c.render().split(b"\n") for b in (b"\0", b" "))


def test_no_root_or_overlay_lines_when_unset():
    keys = [k for k, _ in parse(BootConfig(argv=["x"], root=None, overlay=None).render())]
    assert "root" not in keys and "overlay" not in keys and "overlayfstype" not in keys


def test_cmdline_tokens():
    c = BootConfig(argv=["x"], hostname="vm1", ip="10.0.0.2/24", gw="10.0.0.1", dns=["1.1.1.1", "9.9.9.9"])
    assert c.cmdline() == "mm.hostname=vm1 mm.ip=10.0.0.2/24 mm.gw=10.0.0.1 mm.ifname=eth0 mm.dns=1.1.1.1,9.9.9.9"


def test_bad_stdio():
    with pytest.raises(BootConfigError):
        BootConfig(argv=["x"], stdio="tty")  # type: ignore[arg-type]


def test_unix_socket_paths_for_host_tests():
    pairs = parse(BootConfig(argv=["x"], agent_path="/run/a.sock", attach_path="/run/b.sock").render())
    assert ("agent_path", "/run/a.sock") in pairs and ("attach_path", "/run/b.sock") in pairs
