"""`mm run`: create a machine from an image, start its worker, attach, return the
workload's exit code.

`run_machine` gives Docker's semantics — attached runs stream the workload's output
from its first byte and return its exit code; signals reaching the CLI are forwarded
to the workload (a third Ctrl-C kills the VM); `-d` prints the id once the VM runs;
`--rm` removes the machine after it ends — for any worker configuration. Linux guests
built by `vmm.machines.provision` carry the workload's stdio on an attach stream
held by the worker (separate stdout/stderr, stdin, TTY); other workers (the tiny test
guest) are attached through their console. Options are parsed and checked by
`vmm.machines.options` before anything is created.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~40 ms of `mm run` start-up in the lab (tests/unit/cli/test_run_imports.py)
    from typing import Any, Callable



def run_machine(control, opts, image_ref: str, worker: dict[str, Any] | Callable, out_fd: int = 1,
                in_fd: int = 0, err_fd: int = 2) -> int:
    """Create and start a machine for `opts`; unless detached, attach and return its exit
    code. `worker` is the worker configuration, or a callable `(rec) -> configuration`
    that provisions it (disks, network...); a failure before the VM runs removes the
    machine again, so bad input changes nothing."""
    import os

    from vmm.timeline import mark

    rec = control.machines.create(image_ref, name=opts.name, labels=opts.labels, auto_remove=opts.auto_remove,
                                  config={"run": opts.to_dict(), "cmd": opts.cmd,
                                          "worker": None if callable(worker) else worker})
    try:
        if callable(worker):
            worker(rec)
            mark("cli.provisioned")
        log = control.paths(rec).console_log
        offset = log.stat().st_size if log.exists() else 0
        rec = control.start(rec.id)
        mark("cli.started")
    except BaseException as exc:
        _keep_worker_log(control, rec, exc)
        control.remove(rec.id, force=True)
        raise
    if opts.detach:
        os.write(out_fd, rec.id.encode() + b"\n")
        return 0
    if rec.config["worker"].get("attach_port") is not None:
        code = attach_workload(control, rec, opts, in_fd, out_fd, err_fd)
    else:
        code = attach_and_wait(control, rec, offset, opts.interactive, in_fd, out_fd)
    mark("cli.ended")
    if opts.auto_remove:
        control.remove(rec.id, force=True)
        mark("cli.removed")
    return code


def _keep_worker_log(control, rec, exc: BaseException) -> None:
    """The machine is removed after a failed start, worker.log with it: put the log's
    tail into the error's hint, which points at that file."""
    from vmm.errors import MMError

    log = control.paths(rec).worker_log
    if isinstance(exc, MMError) and log.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        if tail:
            exc.hint = "the worker said:\n  " + "\n  ".join(tail)


def attach_workload(control, rec, opts, in_fd: int = 0, out_fd: int = 1, err_fd: int = 2) -> int:
    """Relay the workload's stdio (the worker's attach stream, from its first byte) to
    ours until it exits; then wait for the VM to end and return the recorded exit code."""
    from vmm.api.errors import ApiError
    from vmm.cli.stdio import relay
    from vmm.errors import MMError
    from vmm.guest.agent_client import Exec
    from vmm.guest.protocol import FrameReader
    from vmm.timeline import mark

    try:
        sock, _ = control.client(rec).attach(offset=0, stdin=opts.interactive)
    except ApiError:
        return _replay_output(control, rec, out_fd, err_fd)  # it ended before we attached

    def force() -> None:
        try:
            control.client(rec).kill("KILL")
        except ApiError:
            pass

    mark("cli.attached")
    try:
        relay(Exec(sock, FrameReader(sock), 0), stdin=opts.interactive, tty=opts.tty, in_fd=in_fd,
              out_fd=out_fd, err_fd=err_fd, on_force=force)
    except MMError:
        pass  # the stream ended without an EXIT (VM killed or crashed): the store says how
    finally:
        sock.close()
    return _ended(control, rec, err_fd)


def _ended(control, rec, err_fd: int) -> int:
    """Wait for the VM's end; say why when the VMM, not the workload, ended it (as Docker
    says "OOMKilled"): a seccomp kill, an OOM kill, a VMM error, a guest panic."""
    import os

    code = control.wait(rec.id)
    end = control.machines.get(rec.id)
    if end.exit_reason in ("seccomp", "oom", "error", "panic", "triple_fault"):
        detail = f": {end.error}" if end.error else ""
        os.write(err_fd, f"mm: machine {end.name} ended by {end.exit_reason}{detail}\n".encode())
    return code


def _replay_output(control, rec, out_fd: int, err_fd: int) -> int:
    """Write a finished workload's output.log to our stdout/stderr; its exit code."""
    import os

    from vmm.guest.protocol import Frame
    from vmm.worker.workload import FrameSplitter

    path = control.paths(rec).output_log
    data = path.read_bytes() if path.exists() else b""
    for ftype, payload in FrameSplitter().feed(data):
        if ftype in (Frame.STDOUT, Frame.STDERR):
            os.write(out_fd if ftype == Frame.STDOUT else err_fd, payload)
    return _ended(control, rec, err_fd)


def attach_and_wait(control, rec, offset: int, interactive: bool, in_fd: int, out_fd: int) -> int:
    """Stream the console from `offset` until the VM ends; the exit code.

    Ctrl-C asks the guest to shut down, a second one kills the VM."""
    import os
    import select
    import signal

    from vmm.api.errors import ApiError

    try:
        sock = control.client(rec).console(offset)
    except ApiError:  # it ended before we attached: its output is all in the log
        with open(control.paths(rec).console_log, "rb") as f:
            f.seek(offset)
            os.write(out_fd, f.read())
        return control.wait(rec.id)
    interrupts = []

    def on_sigint(signum, frame):
        interrupts.append(signum)
        try:
            control.client(rec).kill("INT" if len(interrupts) == 1 else "KILL")
        except ApiError:
            pass  # it is ending already

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        watch = [sock] + ([in_fd] if interactive else [])
        while True:
            try:
                ready, _, _ = select.select(watch, [], [])
            except InterruptedError:
                continue
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break
                os.write(out_fd, data)
            if in_fd in ready:
                data = os.read(in_fd, 4096)
                if data:
                    sock.sendall(data)
                else:
                    watch.remove(in_fd)
    finally:
        signal.signal(signal.SIGINT, old)
        sock.close()
    return control.wait(rec.id)


RUN_HELP = """Boot IMAGE as a microVM and run its command (or CMD), as `docker run` does.

Attached (the default), the workload's stdout and stderr stream here and `mm run`
returns its exit code; -i forwards stdin, -t gives it a terminal. Signals reaching
`mm run` go to the workload; a third Ctrl-C kills the VM. With -d, the machine's id is
printed once the VM runs and its output is kept for `mm logs`.
"""


# Docker's run options (the typer command below declares the same, for --help; a unit
# test keeps the two in step). Parsed by hand on the fast path: typer alone costs seconds
# in the lab, and this is the main command.
_FLAGS = {"-d": "detach", "--detach": "detach", "--rm": "rm", "-i": "interactive", "--interactive": "interactive",
          "-t": "tty", "--tty": "tty", "--ssh": "ssh", "--no-jail": "no_jail"}
_VALUES = {"--name": "name", "-e": "env", "--env": "env", "--env-file": "env_file", "-p": "publish",
           "--publish": "publish", "--cpus": "cpus", "-m": "memory", "--memory": "memory", "--disk-size": "disk_size",
           "--entrypoint": "entrypoint", "-w": "workdir", "--workdir": "workdir", "-u": "user", "--user": "user",
           "--network": "network", "-l": "label", "--label": "label", "--kernel": "kernel",
           "--pids-limit": "pids_limit", "--cpu-limit": "cpu_limit", "--cpuset-cpus": "cpuset_cpus"}
_REPEATED = frozenset({"env", "env_file", "publish", "label"})


def options_from(image: str, cmd: list[str], name: str | None = None, detach: bool = False, rm: bool = False,
                 env=(), env_file=(), publish=(), cpus: str = "1", memory: str = "256m", disk_size: str = "1g",
                 entrypoint: str | None = None, workdir: str | None = None, user: str | None = None,
                 interactive: bool = False, tty: bool = False, network: str | None = None, label=(),
                 ssh: bool = False, kernel: str | None = None, no_jail: bool = False,
                 pids_limit: str | None = None, cpu_limit: str | None = None, cpuset_cpus: str | None = None):
    """`mm run`'s arguments, as typed, checked into RunOptions (UsageError for bad ones)."""
    from vmm.errors import UsageError
    from vmm.machines import options as o

    if image.startswith("-"):  # typer's ignore_unknown_options (kept for CMD's own flags) lets a typo through
        raise UsageError(f"unknown option {image!r} for mm run", "`mm run --help` lists them; they go before IMAGE")
    cmd = list(cmd or [])
    if cmd[:1] == ["--"]:  # `mm run IMAGE -- CMD`: the separator is not the command
        cmd = cmd[1:]
    return o.RunOptions(
        image=image, cmd=cmd, name=name, detach=detach, auto_remove=rm,
        env=o.parse_env(list(env), list(env_file)), publish=[o.parse_publish(p) for p in publish],
        vcpus=o.parse_cpus(cpus), cpu_quota=o.parse_cpu_quota(cpus, cpu_limit), memory_mib=o.parse_memory(memory),
        disk_size_mib=o.parse_disk_size(disk_size), entrypoint=o.parse_entrypoint(entrypoint),
        workdir=o.parse_workdir(workdir), user=user or None, interactive=interactive, tty=tty, network=network,
        labels=o.parse_labels(list(label)), ssh=ssh, kernel=o.parse_kernel(kernel), no_jail=no_jail,
        pids_limit=o.parse_pids_limit(pids_limit), cpuset=o.parse_cpuset(cpuset_cpus))


def fast(args: list[str]) -> int | None:
    """`mm run` without typer (vmm/cli/fastargs.py); None for --help."""
    from vmm.cli.fastargs import Grammar, parse
    from vmm.errors import UsageError

    g = Grammar("run", _FLAGS, _VALUES, _REPEATED, stop_at_positional=True)
    parsed = parse(g, args)
    if parsed is None:
        return None
    opts, rest = parsed
    if not rest:
        raise UsageError("mm run needs an image", "usage: mm run [OPTIONS] IMAGE [CMD...]; " + g.hint)
    return run_image(options_from(rest[0], rest[1:], **opts))


def register(app) -> None:
    import typer

    @app.command("run", help=RUN_HELP,
                 context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
    def run(
        image: str = typer.Argument(..., help="image reference, e.g. alpine:3.20 (default registry: Docker Hub)"),
        cmd: list[str] = typer.Argument(None, help="command and arguments (default: the image's)"),
        name: str = typer.Option(None, "--name", help="machine name (default: generated)"),
        detach: bool = typer.Option(False, "-d", "--detach", help="run in the background, print the id"),
        rm: bool = typer.Option(False, "--rm", help="remove the machine when it ends"),
        env: list[str] = typer.Option([], "-e", "--env", help="KEY=VALUE, or KEY to pass the host's value"),
        env_file: list[str] = typer.Option([], "--env-file", help="file of KEY=VALUE lines"),
        publish: list[str] = typer.Option([], "-p", "--publish",
                                          help=r"\[HOSTIP:]\[HOSTPORT:]GUESTPORT\[/tcp|udp] (no host port: a free one)"),
        cpus: str = typer.Option("1", "--cpus", help="vCPUs; a fraction rounds up and also limits the VM's CPU time "
                                 "to it (Docker's --cpus 0.5)"),
        memory: str = typer.Option("256m", "-m", "--memory", help="guest memory, e.g. 512m, 2g"),
        disk_size: str = typer.Option("1g", "--disk-size", help="size of the writable layer"),
        entrypoint: str = typer.Option(None, "--entrypoint", help="replace the image's entrypoint (\"\" clears it)"),
        workdir: str = typer.Option(None, "-w", "--workdir", help="working directory in the guest"),
        user: str = typer.Option(None, "-u", "--user", help="USER, UID, USER:GROUP or UID:GID"),
        interactive: bool = typer.Option(False, "-i", "--interactive", help="keep stdin open and forward it"),
        tty: bool = typer.Option(False, "-t", "--tty", help="give the workload a terminal"),
        network: str = typer.Option(None, "--network", help="network name (default: mm), or none"),
        label: list[str] = typer.Option([], "-l", "--label", help="KEY=VALUE metadata"),
        ssh: bool = typer.Option(False, "--ssh", help="start an SSH server in the guest (`mm ssh`)"),
        kernel: str = typer.Option(None, "--kernel", help="guest kernel (default: `mm kernel path`)"),
        no_jail: bool = typer.Option(False, "--no-jail", help="debugging only: run the VMM without its jail"),
        pids_limit: str = typer.Option(None, "--pids-limit", help="most threads the VM's process may have"),
        cpu_limit: str = typer.Option(None, "--cpu-limit", help="CPU time of the VM's process (vCPUs and device "
                                      "I/O) in CPUs, e.g. 1.5 (default: no limit)"),
        cpuset_cpus: str = typer.Option(None, "--cpuset-cpus", help="host CPUs the VM's threads may run on, "
                                        "e.g. 0-3 or 1,3 (default: any)"),
    ) -> int:
        return run_image(options_from(
            image, cmd, name=name, detach=detach, rm=rm, env=env, env_file=env_file, publish=publish, cpus=cpus,
            memory=memory, disk_size=disk_size, entrypoint=entrypoint, workdir=workdir, user=user,
            interactive=interactive, tty=tty, network=network, label=label, ssh=ssh, kernel=kernel,
            no_jail=no_jail, pids_limit=pids_limit, cpu_limit=cpu_limit, cpuset_cpus=cpuset_cpus))


def run_image(opts, out_fd: int = 1, in_fd: int = 0, err_fd: int = 2) -> int:
    """`mm run`: resolve (pull) the image, provision a machine for it, run it."""
    import sys

    if opts.no_jail:
        from vmm.jail import NO_JAIL_WARNING

        print(f"warning: {NO_JAIL_WARNING}", file=sys.stderr)
    from vmm.cli.stdio import terminal_size
    from vmm.image.images import resolve
    from vmm.machines.db import open_control
    from vmm.machines.provision import provision
    from vmm.timeline import mark

    control = open_control()
    if opts.name:
        _check_name_free(control, opts.name)  # before a pull that may take a while
    image = resolve(opts.image, pull=True, quiet=not sys.stderr.isatty())
    mark("cli.resolved")
    terminal = terminal_size(in_fd) if opts.tty else None
    return run_machine(control, opts, image.name, lambda rec: provision(control, rec, opts, image, terminal),
                       out_fd=out_fd, in_fd=in_fd, err_fd=err_fd)


def _check_name_free(control, name: str) -> None:
    from vmm.machines import NameInUse
    from vmm.machines.ids import validate_name

    validate_name(name)
    if not control.machines.name_taken(name):
        return
    raise NameInUse(f"the name {name!r} is already used by another machine",
                    f"pick another --name, or `mm rm {name}` first")
