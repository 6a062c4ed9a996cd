"""The command-line error kit both CLIs share (dfedit and dfedit-train): every problem the user can
fix is one line `PROG: error: ...` on stderr and a non-zero exit; bugs keep their traceback.

- `OneLineErrors`: the Typer group class; click's usage errors (unknown option, bad number,
  missing argument) become one line instead of click's multi-line box.
- `error_handler(prefix, oom_hint)`: the decorator each command wears; DfeditError (whose message
  is one sentence), Ctrl-C and out-of-memory become one line and an exit code.
"""

import functools
import os
import sys

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors its own click; its exceptions are the ones raised
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
    from typer.exceptions import Abort, Exit
except ImportError:  # pragma: no cover - older typer uses the click package
    from click.exceptions import Abort, ClickException, Exit, NoArgsIsHelpError

from .errors import DfeditError, ParamError

ARGV: list[str] = []  # the arguments of the current invocation (dfedit records them in PNG metadata)


class OneLineErrors(TyperGroup):
    """Usage errors (unknown option, bad number, missing argument) as one `dfedit: error:` line."""

    prefix = "dfedit"  # dfedit-train subclasses this with its own name

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        ARGV[:] = list(sys.argv[1:] if args is None else args)
        try:  # before anything imports torch, which aborts inside oneMKL without a working directory
            os.getcwd()
        except OSError:
            print(f"{self.prefix}: error: the current directory no longer exists (deleted?); cd into an existing "
                  "directory and run it again", file=sys.stderr)
            sys.exit(1)
        try:
            # Not standalone: click returns the exit code of typer.Exit instead of exiting itself,
            # and raises usage errors to us instead of printing its multi-line box.
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except NoArgsIsHelpError:
            sys.exit(0)  # the help text has already been printed
        except ClickException as e:
            print(f"{self.prefix}: error: {e.format_message()}", file=sys.stderr)
            sys.exit(e.exit_code)
        except Exit as e:
            sys.exit(e.exit_code)
        except Abort:
            print(f"{self.prefix}: error: aborted", file=sys.stderr)
            sys.exit(1)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def error_handler(prefix: str, oom_hint: str = "try --offload or fewer --num-samples",
                  cpu_oom_hint: str | None = None):
    """A decorator: one clear `PREFIX: error:` line and a non-zero exit for anything the user can
    fix (DfeditError, Ctrl-C, out of memory); bugs keep their traceback. dfedit-train uses it too.
    `cpu_oom_hint`: the hint when the CPU's memory ran out (default `oom_hint`), as a GPU-only
    remedy (--offload) does not apply there."""
    cpu_hint = cpu_oom_hint or oom_hint

    def fail(msg: str, code: int = 1):
        typer.echo(f"{prefix}: error: {msg}", err=True)
        raise typer.Exit(code)

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ParamError as e:
                fail(e.cli_message())  # the library named the parameter; the user typed the option
            except DfeditError as e:
                fail(str(e), getattr(e, "exit_code", 1))  # e.g. 143 after SIGTERM
            except KeyboardInterrupt:
                fail("interrupted", 130)
            except MemoryError:
                fail(f"out of memory (CPU RAM): {cpu_hint}")
            except ImportError as e:  # a library that cannot be mapped into memory (ulimit -v, a full RAM)
                if "failed to map segment" in str(e) or "cannot allocate memory" in str(e).lower():
                    fail(f"out of memory (CPU RAM) while loading {str(e).split(':')[0] or 'a library'}: {cpu_hint}")
                raise
            except RuntimeError as e:
                msg = str(e).lower()
                if "out of memory" in msg:
                    fail(f"the GPU ran out of memory: {oom_hint}")
                if "can't allocate memory" in msg or "cannot allocate memory" in msg:  # torch's CPU allocator
                    fail(f"out of memory (CPU RAM): {cpu_hint}")
                raise
        return wrapper

    return decorate
