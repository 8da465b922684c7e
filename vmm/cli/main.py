"""`mm` entry point: lazy command dispatch and the one place errors are printed.

Only the module of the command being run is imported (pip's trick), so `mm --version`
and `mm ps` start fast. Every command module exposes `register(app)` adding its typer
command(s) or sub-app; add a line to COMMANDS to add a command.
"""
from __future__ import annotations

import os
import sys

# command name -> module defining it. A module may define several names (list each).
COMMANDS: dict[str, str] = {
    "doctor": "vmm.cli.doctor",
    "kernel": "vmm.cli.kernel",
    "lab": "vmm.cli.lab",
    "boot": "vmm.cli.boot",
    "image": "vmm.cli.image",
    "network": "vmm.cli.network",
    "run": "vmm.cli.run",
    "ps": "vmm.cli.ps",
    "inspect": "vmm.cli.ps",
    "logs": "vmm.cli.logs",
    "console": "vmm.cli.logs",
    "start": "vmm.cli.lifecycle",
    "stop": "vmm.cli.lifecycle",
    "restart": "vmm.cli.lifecycle",
    "kill": "vmm.cli.lifecycle",
    "rm": "vmm.cli.lifecycle",
    "wait": "vmm.cli.lifecycle",
    "pause": "vmm.cli.lifecycle",
    "unpause": "vmm.cli.lifecycle",
    "stats": "vmm.cli.stats",
    "system": "vmm.cli.prune",
    "exec": "vmm.cli.exec",
    "cp": "vmm.cli.cp",
    "ssh": "vmm.cli.ssh",
    "top": "vmm.cli.top",
}

# command -> "module:function" run without building the typer app: it takes the arguments
# after the command and returns an exit code, or None to fall back to typer (help, unusual
# flags). Importing typer alone costs ~80 ms; this keeps `mm ps` within its 60 ms budget.
FAST_PATHS: dict[str, str] = {"ps": "vmm.cli.ps:fast_ps", "boot": "vmm.cli.boot:fast", "exec": "vmm.cli.exec:fast"}
# typer builds a pydantic adapter per parameter (seconds under the lab's TCG): `mm run` and
# the lifecycle commands parse by hand too (vmm/cli/fastargs.py).
FAST_PATHS.update({
    "run": "vmm.cli.run:fast", "inspect": "vmm.cli.ps:fast_inspect", "logs": "vmm.cli.logs:fast_logs",
    "console": "vmm.cli.logs:fast_console", "stats": "vmm.cli.stats:fast_stats", "system": "vmm.cli.prune:fast_system",
    "image": "vmm.cli.image_actions:fast",
    **{c: f"vmm.cli.lifecycle:fast_{c}" for c in ("start", "stop", "restart", "kill", "rm", "wait", "pause", "unpause")},
})

GLOBAL_HELP = "micromachines: boot OCI images as KVM microVMs."


def _first_command(argv: list[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def build_app(only: str | None = None):
    """The typer app with every command, or just `only` when it is a known command."""
    import importlib

    import typer

    app = typer.Typer(
        help=GLOBAL_HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    modules = [COMMANDS[only]] if only in COMMANDS else sorted(set(COMMANDS.values()))
    for name in modules:
        importlib.import_module(name).register(app)
    if len(modules) == 1:
        # typer collapses a single command into the root; a hidden no-op keeps `mm NAME ...` routing.
        @app.command("_noop", hidden=True)
        def _noop() -> None:  # pragma: no cover - never called
            pass

    return app


def _fast_path(argv: list[str]) -> int | None:
    ref = FAST_PATHS.get(argv[0]) if argv else None
    if ref is None:
        return None
    import importlib

    module, _, function = ref.partition(":")
    return getattr(importlib.import_module(module), function)(argv[1:])


def print_error(err, stream=None) -> None:
    stream = stream or sys.stderr
    print(f"error: {err.message}", file=stream)
    if err.hint:
        print(f"hint: {err.hint}", file=stream)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("MM_TIMELINE"):
        from vmm.timeline import mark

        mark("cli.main")
    debug = os.environ.get("MM_DEBUG") == "1"
    if "--debug" in argv:
        argv.remove("--debug")
        debug = True
        os.environ["MM_DEBUG"] = "1"
    if argv[:1] in (["--version"], ["-V"]):
        from vmm import __version__

        print(f"mm {__version__}")
        return 0

    from vmm.errors import ExitStatus, MMError

    try:
        code = _fast_path(argv)
        if code is not None:
            return code
        app = build_app(_first_command(argv))
        result = app(args=argv, prog_name="mm", standalone_mode=False)
        return int(result or 0)
    except MMError as err:
        if debug:
            import traceback

            traceback.print_exc()
        print_error(err)
        return int(err.exit_status)
    except KeyboardInterrupt:
        return int(ExitStatus.INTERRUPTED)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:  # typer's (vendored click's) usage errors and the unexpected
        import typer
        from typer.exceptions import TyperException

        if isinstance(exc, typer.Exit):
            return exc.exit_code
        if isinstance(exc, typer.Abort):
            return int(ExitStatus.INTERRUPTED)
        if isinstance(exc, TyperException):
            show = getattr(exc, "show", None)
            if show:
                show()
            else:
                print(f"error: {exc.format_message()}", file=sys.stderr)
            return exc.exit_code
        if debug:
            raise
        print(f"error: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: run again with --debug for the traceback, and report it", file=sys.stderr)
        return int(ExitStatus.ERROR)


def entry() -> None:
    """The `mm` executable: main(), then leave() with its status."""
    leave(main())


def leave(code: int) -> None:
    """Exit with `code`, without the interpreter's teardown when nothing needs it.

    Finalizing every module and object costs `mm ps` ~3-14 ms here and, under the lab's
    emulation, tens of milliseconds at the end of every command. It is skipped when no
    exit handler is registered (atexit; weakref.finalize registers one too) and no
    non-daemon thread runs; otherwise, or when stdout or stderr cannot be flushed (a
    closed pipe: Python reports that as it always does), Python exits normally. SQLite
    connections left open are safe: every transaction committed before, and the next
    connection takes the WAL as it is."""
    import atexit

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)
    threading = sys.modules.get("threading")  # not imported: no thread was started through it
    busy = threading is not None and any(not t.daemon for t in threading.enumerate()
                                         if t is not threading.main_thread())
    callbacks = getattr(atexit, "_ncallbacks", None)
    if busy or callbacks is None or callbacks():
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    entry()
