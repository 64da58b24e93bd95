"""Persistent command trials: one Python process serves many trials.

batchd offers the mode by setting BATCHD_CONTROL_FD=<n> in the first trial's
environment: an inherited descriptor, one end of an AF_UNIX stream socket
pair. The first `Trial()` that reads os.environ takes the offer
(`take_over`): it says hello, abandons the script's original run and, for
each trial, runs the script's main module again (`runpy`, so imports stay
cached), answers with a `trial_done` line and waits for the next request.

Protocol 1, JSON lines of at most 64 KiB each way, unknown fields ignored:

- script -> batchd: ``{"event":"hello","protocol":1,"pid":P}`` once, then
  per trial k ``{"event":"trial_done","trial":k,"exit":S,"stage":"setup"|
  "train","threads":T,"cuda":null|{"max_reserved":..,"max_allocated":..,
  "reserved_idle":..}}``, after the line ``batchd-trial-done k`` on stderr.
- batchd -> script: ``{"op":"trial","trial":k+1,"env":{NAME: "value" | null}}``
  (null unsets) or ``{"op":"exit"}``; EOF also ends the process (status 0).

Trial 1 runs with the environment the process started with. Only the
standard library is used here; torch's part (peak reset, clean-up, CUDA
figures) is in batchd.torch and used only when torch is already imported.
"""
from __future__ import annotations

import functools
import gc
import json
import os
import runpy
import socket
import sys
import threading
import traceback
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

__all__ = ["CONTROL_ENV", "PROTOCOL", "SENTINEL", "cache", "serving", "take_over"]

#: The variable that offers the mode: the control socket's descriptor.
CONTROL_ENV = "BATCHD_CONTROL_FD"
PROTOCOL = 1
#: Written to stderr as "batchd-trial-done <k>" just before trial_done.
SENTINEL = "batchd-trial-done"
#: The longest protocol line (batchd's REPORT_LINE_LIMIT).
LINE_LIMIT = 64 * 1024
#: Exit status for a protocol error (bad JSON, wrong trial number, long line).
PROTOCOL_ERROR_EXIT = 2

_serving = False
_cache: Dict[Any, Any] = {}
_original_main: Optional[Dict[str, Any]] = None  # what take_over cleared (for tests)

F = TypeVar("F", bound=Callable[..., Any])


def serving() -> bool:
    """Whether this process serves trials for batchd (persistent mode)."""
    return _serving


def cache(fn: F) -> F:
    """Memoize `fn` for the life of a persistent trial process.

    In persistent mode your script's module code runs again for every trial
    in one process; data it loads at module level would be loaded again
    each time. Wrap the loading function, and the first trial's result is
    reused by the later ones::

        @batchd.cache
        def load_dataset(path):
            return pandas.read_csv(path)

        data = load_dataset("train.csv")

    The key is the function's module and qualified name, its positional
    arguments and its keyword arguments (sorted), so they must be hashable
    (with unhashable ones the call is not memoized). The cached value is
    shared by the trials: do not change it in place, and keep what depends
    on the trial (the seed, the batch size) out of it. When batchd does not
    offer a persistent process, `fn` is simply called every time, and
    nothing is kept.
    """

    @functools.wraps(fn)
    def cached(*args: Any, **kwargs: Any) -> Any:
        if not (_serving or CONTROL_ENV in os.environ):
            return fn(*args, **kwargs)
        try:
            key = (getattr(fn, "__module__", None), getattr(fn, "__qualname__", repr(fn)), args,
                   tuple(sorted(kwargs.items())))
            hash(key)
        except TypeError:  # unhashable arguments: not memoized
            return fn(*args, **kwargs)
        if key not in _cache:
            _cache[key] = fn(*args, **kwargs)
        return _cache[key]

    return cached  # type: ignore[return-value]


# --- finding and running the main program -----------------------------------

Main = Tuple[str, str]  # ("module", dotted name) or ("path", file)


def _find_main() -> Optional[Main]:
    """How to run the main program again: `python -m name` by its module
    name, a script by its file; None for `python -c`, a REPL or a notebook."""
    main = sys.modules.get("__main__")
    if main is None:
        return None
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name and name != "__main__":
        return ("module", name)
    path = getattr(main, "__file__", None)
    if path and os.path.isfile(path):
        return ("path", os.path.abspath(path))
    return None


def _run_main(main: Main) -> None:
    kind, target = main
    if kind == "module":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(target, run_name="__main__")


def _exit_status(code: Any) -> int:
    """A SystemExit's code as the process's exit status, as Python exits."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:  # noqa: BLE001
        pass
    return 1


def _user_traceback(tb: Any) -> Any:
    """The traceback without the frames of runpy and this module, so it
    starts at the script's <module> line, as Python's own would (None for a
    script that did not compile: Python prints no frames for it either)."""
    skip = {__name__, "runpy"}
    while tb is not None and tb.tb_frame.f_globals.get("__name__") in skip:
        tb = tb.tb_next
    return tb


def _print_uncaught(error: BaseException) -> None:
    """Print `error` as Python does for an uncaught exception (through
    sys.excepthook, which batchd.trial wraps to flush the reports)."""
    tb = _user_traceback(error.__traceback__)
    error.__traceback__ = tb  # Python's hook prints the exception's own traceback
    try:
        sys.excepthook(type(error), error, tb)
    except Exception:  # noqa: BLE001 - a broken hook: print it ourselves
        traceback.print_exception(type(error), error, tb)


# --- the control channel -----------------------------------------------------


class ProtocolError(Exception):
    pass


class _Channel:
    """JSON lines over the control socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, message: Dict[str, Any]) -> None:
        self.sock.sendall((json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8"))

    def receive(self) -> Optional[Dict[str, Any]]:
        """The next message; None at EOF."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > LINE_LIMIT:
                raise ProtocolError(f"a line longer than {LINE_LIMIT} bytes")
            try:
                chunk = self.sock.recv(LINE_LIMIT + 1)
            except InterruptedError:  # pragma: no cover - retried by Python since 3.5
                continue
            except OSError:
                return None
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        if len(line) > LINE_LIMIT:
            raise ProtocolError(f"a line longer than {LINE_LIMIT} bytes")
        try:
            message = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise ProtocolError(f"not a JSON line: {error}") from None
        if not isinstance(message, dict):
            raise ProtocolError("not a JSON object")
        return message


# --- per-trial resets and clean-up ---------------------------------------------


def _torch_hooks() -> Any:
    """batchd.torch when torch is already imported (never imports torch)."""
    if "torch" not in sys.modules:
        return None
    try:
        from . import torch as batchd_torch  # noqa: PLC0415 - only with torch loaded

        return batchd_torch
    except Exception:  # noqa: BLE001
        return None


def _reset_peaks() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    hooks = _torch_hooks()
    if hooks is not None:
        try:
            hooks._cuda_reset_peaks()
        except Exception:  # noqa: BLE001 - a broken CUDA state shows in the next trial
            pass


_malloc_trim: Any = None


def _trim_malloc() -> None:
    """Give freed heap back to the system (glibc's malloc_trim; elsewhere nothing)."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        try:
            import ctypes  # noqa: PLC0415

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            pass
    if _malloc_trim:
        try:
            _malloc_trim(0)
        except Exception:  # noqa: BLE001
            pass


def _clean_up() -> Optional[Dict[str, int]]:
    """After a trial: collect its garbage, return the device's and the
    heap's free memory; the trial's CUDA figures, or None without CUDA."""
    gc.collect()
    cuda = None
    hooks = _torch_hooks()
    if hooks is not None:
        try:
            cuda = hooks._cuda_clean_up()
        except Exception:  # noqa: BLE001
            cuda = None
    _trim_malloc()
    return cuda


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001 - a closed or replaced stream
            pass


def _write_sentinel(trial: int) -> None:
    _flush_std()
    data = f"{SENTINEL} {trial}\n".encode("ascii")
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass


def _apply_env(env: Any) -> None:
    if env is None:
        return
    if not isinstance(env, dict):
        raise ProtocolError("env is not an object")
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        elif isinstance(value, str):
            os.environ[name] = value
        else:
            raise ProtocolError(f"env value of {name} is neither a string nor null")
    # A request never re-offers the mode to the script's own children.
    os.environ.pop(CONTROL_ENV, None)


# --- taking over and serving ---------------------------------------------------


def take_over() -> None:
    """Called by `Trial()` when BATCHD_CONTROL_FD is in os.environ: take the
    offer and serve trials until batchd says exit (never returns), or
    decline it and return, leaving this process to run its one trial as
    usual. The variable is removed from os.environ either way."""
    value = os.environ.pop(CONTROL_ENV, None)
    if value is None or _serving:
        return
    import multiprocessing  # noqa: PLC0415 - only when offered

    if multiprocessing.parent_process() is not None:
        return  # a multiprocessing child: the descriptor is not ours
    try:
        fd = int(value)
    except ValueError:
        return
    main = _find_main()
    if main is None or threading.current_thread() is not threading.main_thread():
        # python -c, a REPL: nothing to run again; a Trial() made on another
        # thread: the main thread's code cannot be taken over from there.
        try:
            os.close(fd)
        except OSError:
            pass
        return
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return  # not a socket: not an offer we can take
    try:
        sock.set_inheritable(False)  # children (a data loader, a `sleep`) never hold it
        sock.setblocking(True)
        channel = _Channel(sock)
        channel.send({"event": "hello", "protocol": PROTOCOL, "pid": os.getpid()})
    except OSError:
        _flush_std()
        os._exit(0)  # batchd is gone
    _serve(channel, main)


def _clear_original_main() -> None:
    """The script's original run is abandoned (its frame never resumes):
    drop what it made before Trial() so it is not held twice."""
    global _original_main
    main = sys.modules.get("__main__")
    namespace = getattr(main, "__dict__", None)
    if not isinstance(namespace, dict):
        return
    dropped = [k for k in namespace if not (k.startswith("__") and k.endswith("__"))]
    for key in dropped:
        del namespace[key]
    _original_main = namespace


def _serve(channel: _Channel, main: Main) -> None:
    global _serving
    from . import trial as trial_module  # noqa: PLC0415 - trial imports this module

    _serving = True
    _clear_original_main()
    workdir = os.getcwd()
    argv = list(sys.argv)
    gc.collect()
    freeze = getattr(gc, "freeze", None)
    if freeze is not None:
        freeze()  # imports and the interpreter: never walked by later collections
    number = 1
    try:
        while True:
            status, stage = _run_trial(main, trial_module, workdir, argv)
            cuda = _clean_up()
            _write_sentinel(number)
            try:
                channel.send({
                    "event": "trial_done",
                    "trial": number,
                    "exit": status,
                    "stage": stage,
                    "threads": threading.active_count(),
                    "cuda": cuda,
                })
            except OSError:
                break  # batchd is gone
            request = channel.receive()
            if request is None or request.get("op") == "exit":
                break
            if request.get("op") != "trial":
                raise ProtocolError(f"unknown op {request.get('op')!r}")
            if type(request.get("trial")) is not int or request["trial"] != number + 1:
                raise ProtocolError(f"asked for trial {request.get('trial')!r} after trial {number}")
            _apply_env(request.get("env"))
            number += 1
    except ProtocolError as error:
        _flush_std()
        try:
            print(f"batchd: protocol error on {CONTROL_ENV}: {error}", file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001
            pass
        os._exit(PROTOCOL_ERROR_EXIT)
    except KeyboardInterrupt:  # SIGINT while idle
        _flush_std()
        os._exit(130)
    except BaseException:  # noqa: BLE001 - a bug here must not look like a clean exit
        try:
            traceback.print_exc()
        except Exception:  # noqa: BLE001
            pass
        _flush_std()
        os._exit(PROTOCOL_ERROR_EXIT)
    _flush_std()
    os._exit(0)


def _run_trial(main: Main, trial_module: Any, workdir: str, argv: Any) -> Tuple[int, str]:
    """Run the main program once: (exit status, "setup" or "train")."""
    _reset_peaks()
    try:
        os.chdir(workdir)
    except OSError:
        pass
    sys.argv[:] = argv
    made: list = []
    trial_module._registry = made
    status = 0
    try:
        _run_main(main)
    except SystemExit as exit_:
        status = _exit_status(exit_.code)
    except KeyboardInterrupt:
        status = 130
        _print_uncaught_safely()
    except BaseException:  # noqa: BLE001 - the script's failure, reported as Python would
        status = 1
        _print_uncaught_safely()
    finally:
        trial_module._registry = None
    stage = "train" if any(t.steps_reported > 0 for t in made) else "setup"
    for trial in made:
        try:
            trial.close()
        except Exception:  # noqa: BLE001 - a report that cannot be written shows as short
            pass
    made.clear()
    return status, stage


def _print_uncaught_safely() -> None:
    error = sys.exc_info()[1]
    if error is None:
        return
    try:
        _print_uncaught(error)
    except Exception:  # noqa: BLE001
        pass
    finally:
        error = None  # the traceback holds the trial's frames
