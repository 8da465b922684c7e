"""`mm exec [-i] [-t] [-d] [-e KEY=VAL]... [--env-file F] [-u USER] [-w DIR] MACHINE CMD [ARG...]`.

Docker's exec: options come before MACHINE, everything after it is the command (an
optional `--` right after MACHINE is dropped). The exit status is the command's (128+N
when signal N killed it). `-i` streams stdin until EOF; without it the command's stdin
is at EOF at once. `-t` gives the command a PTY sized like this terminal, puts this
terminal in raw mode when `-i` is given too, and follows window-size changes
(SIGWINCH); without `-t` stdout and stderr stay apart. Signals reaching mm exec are
forwarded to the command, and a third Ctrl-C gives up (the agent then kills the
command); the terminal side is `vmm.cli.stdio.relay`, shared with `mm run`. `-d`
returns once the command started; a background process of mm holds its session until
it ends (the agent kills a session's processes when its stream closes).

Parsing is by hand (`parse_args`) and runs without typer (FAST_PATHS in vmm/cli/main.py)
because exec's start-up time is part of every round trip; `mm exec --help` goes to the
typer command, which shares `execute`.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

from vmm.errors import UsageError

USAGE_HINT = "usage: mm exec [OPTIONS] MACHINE CMD [ARG...]; `mm exec --help` lists the options"

_FLAGS = {"-i": "interactive", "--interactive": "interactive", "-t": "tty", "--tty": "tty",
          "-d": "detach", "--detach": "detach"}
_VALUES = {"-e": "env", "--env": "env", "--env-file": "env_file", "-u": "user", "--user": "user",
           "-w": "workdir", "--workdir": "workdir"}


@dataclass
class ExecOptions:
    machine: str
    argv: list[str]
    interactive: bool = False
    tty: bool = False
    detach: bool = False
    env: list[str] = field(default_factory=list)
    env_file: list[str] = field(default_factory=list)
    user: str | None = None
    workdir: str | None = None


def _set(values: dict, key: str, value: str) -> None:
    if key in ("env", "env_file"):
        values[key].append(value)
    else:
        values[key] = value


def parse_args(args: list[str]) -> ExecOptions | None:
    """Docker's exec grammar; None when help was asked for. UsageError for bad input."""
    values: dict = {"env": [], "env_file": []}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if arg in ("-h", "--help"):
            return None
        if not arg.startswith("-") or arg == "-":
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name in _FLAGS and not eq:
                values[_FLAGS[name]] = True
            elif name in _VALUES:
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise UsageError(f"{name} needs a value", USAGE_HINT)
                    value = args[i]
                _set(values, _VALUES[name], value)
            else:
                raise UsageError(f"unknown option {arg!r} for mm exec", USAGE_HINT)
        else:
            i = _short_cluster(args, i, values)
        i += 1
    rest = args[i:]
    if not rest:
        raise UsageError("mm exec needs a machine and a command", USAGE_HINT)
    machine, argv = rest[0], rest[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise UsageError(f"mm exec {machine}: no command given", USAGE_HINT)
    return ExecOptions(machine=machine, argv=argv, **values)


def _short_cluster(args: list[str], i: int, values: dict) -> int:
    """`-it`, `-ite KEY=V`, `-eKEY=V`: getopt's rules. Returns the index of the last
    argument consumed."""
    cluster = args[i][1:]
    for pos, letter in enumerate(cluster):
        opt = "-" + letter
        if opt in _FLAGS:
            values[_FLAGS[opt]] = True
        elif opt in _VALUES:
            value = cluster[pos + 1:]
            if not value:
                i += 1
                if i >= len(args):
                    raise UsageError(f"{opt} needs a value", USAGE_HINT)
                value = args[i]
            _set(values, _VALUES[opt], value)
            return i
        else:
            raise UsageError(f"unknown option {opt!r} for mm exec", USAGE_HINT)
    return i


def checked(opts: ExecOptions, in_fd: int = 0) -> tuple[dict[str, str], str | None]:
    """(env, workdir) validated with `mm run`'s rules; refuses -it without a terminal."""
    from vmm.machines.options import parse_env, parse_workdir

    if opts.interactive and opts.tty and not opts.detach and not os.isatty(in_fd):
        raise UsageError("the input device is not a TTY", "drop -t, or run mm exec -it from a terminal")
    if opts.user == "":
        raise UsageError("--user needs a name or uid", "e.g. -u root, -u 1000:1000")
    return parse_env(opts.env, opts.env_file), parse_workdir(opts.workdir)


def execute(opts: ExecOptions, in_fd: int = 0, out_fd: int = 1, err_fd: int = 2) -> int:
    """Runs the command; its exit code (0 for -d once it started)."""
    from vmm.cli.stdio import relay, terminal_size
    from vmm.machines.db import open_control
    from vmm.machines.exec import guest_agent

    env, workdir = checked(opts, in_fd)
    _, agent = guest_agent(open_control(), opts.machine)
    rows, cols = terminal_size(in_fd) or terminal_size(out_fd) or (24, 80)
    # Without -i the command reads EOF at once; a PTY without -i simply gets no input
    # (its EOF would be a ^D typed into the terminal).
    ex = agent.start(opts.argv, env=env, cwd=workdir, user=opts.user, tty=opts.tty, rows=rows, cols=cols,
                     stdin_eof=not opts.tty and (not opts.interactive or opts.detach))
    if opts.detach:
        hold_in_background(ex)
        return 0

    def give_up() -> None:
        raise KeyboardInterrupt  # unwinds relay; closing the stream makes the agent kill the command

    with ex:
        return relay(ex, stdin=opts.interactive, tty=opts.tty, in_fd=in_fd, out_fd=out_fd, err_fd=err_fd,
                     on_force=give_up)


def hold_in_background(ex) -> None:
    """`-d`: a detached process (its own session, like a worker) keeps the exec's stream
    open, discarding output, until the command ends; we return at once."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                ex.wait()
            except Exception:
                pass  # the VM ended under it: nobody is listening for the reason
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    ex.close()


def fast(args: list[str]) -> int | None:
    """The FAST_PATHS entry: None (typer shows the help) when help is asked for."""
    opts = parse_args(args)
    if opts is None:
        return None
    return execute(opts)


def register(app) -> None:
    import typer

    @app.command("exec", context_settings={"allow_interspersed_args": False})
    def exec_(
        machine: str = typer.Argument(..., help="machine name or id"),
        command: list[str] = typer.Argument(..., help="the command and its arguments"),
        interactive: bool = typer.Option(False, "-i", "--interactive", help="stream stdin to the command"),
        tty: bool = typer.Option(False, "-t", "--tty", help="give the command a terminal (raw mode with -i)"),
        detach: bool = typer.Option(False, "-d", "--detach", help="return once the command started"),
        env: list[str] = typer.Option([], "-e", "--env", help="KEY=VALUE (or KEY: the host's value)"),
        env_file: list[str] = typer.Option([], "--env-file", help="a file of KEY=VALUE lines"),
        user: str = typer.Option(None, "-u", "--user", help="name, uid, name:group or uid:gid"),
        workdir: str = typer.Option(None, "-w", "--workdir", help="absolute working directory"),
    ) -> None:
        """Run a command in a running machine; its exit code is ours."""
        argv = command[1:] if command[:1] == ["--"] else command
        if not argv:
            raise UsageError(f"mm exec {machine}: no command given", USAGE_HINT)
        opts = ExecOptions(machine, argv, interactive, tty, detach, list(env), list(env_file), user, workdir)
        raise typer.Exit(execute(opts))
