"""Every program of a grid alive at once under Triton's interpreter, for kernels whose programs wait on each other.

Triton's interpreter (``TRITON_INTERPRET=1``) runs the programs of a grid one
after another (``triton.runtime.interpreter.GridExecutor``), so a program
that waits for another, as at the grid barrier of
:func:`.recurrence.forward_grid_sync_kernel`, spins forever.  :func:`launch`
runs the same interpreted kernel with one Python thread per program:

* one program runs at a time, and the turn passes at each atomic operation
  (every point where programs synchronise) to a program drawn from the live
  ones by a seeded generator (the program that just ran included, so a
  program may run ahead to its next atomic).  Between atomics a program's
  loads and stores happen as one block; which blocks come first differs from
  atomic to atomic.  The schedule is a function of the seed, so a run, and a
  failure, reproduces;
* the interpreter keeps the running program's id on its one builder
  (``interpreter_builder.grid_idx``): whoever takes the turn sets its own;
* atomics are atomic across the programs because no other program runs
  while one executes (nothing relies on the interpreter's C++ atomics);
* a launch never hangs.  When every live program has used its last
  :data:`STALL_TURNS` turns without writing anything (no store, and atomics
  that left memory as it was: polling), none can ever go on, and the launch
  raises :class:`GridHang` at once, naming the kernel and the programs
  stuck; a launch still running after ``timeout_s`` raises it too.  The
  programs are stopped at their next load, store or atomic (a program that
  waits for another must read memory to see it).  The first error of a
  program stops the others, as a fault ends a GPU launch.  (A program that
  loops without touching memory cannot be stopped: its daemon thread runs
  on after the error.)

What it cannot show is the GPU memory model: every access here is seen by
every later one (sequential consistency), so a barrier without its
release/acquire ordering, or an exchange buffer read through a cache that is
not coherent across SMs, passes here and may fail on a GPU.  A barrier
missing, counting wrong, or data read before the barrier that publishes it,
fails here (for the schedules the seed draws).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import random
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from triton.runtime import interpreter
from triton.runtime.errors import InterpreterError

#: seconds a launch may run before :class:`GridHang` (the interpreter is slow: generous)
TIMEOUT_S = float(os.environ.get("FUSEDRNN_TRITON_GRID_TIMEOUT", "300"))

#: the schedule's seed when a launch names none
SEED = int(os.environ.get("FUSEDRNN_TRITON_GRID_SEED", "0"))

#: consecutive turns without a write after which a program counts as stuck (a program polling a
#: bounded number of times, longer than this, while all the others poll too, would be taken for a deadlock)
STALL_TURNS = 64

#: seconds the stopped programs get to reach their next memory access after a timeout
_STOP_GRACE_S = 10.0

# the interpreter has one builder; two launches at once would fight over its program id
_LAUNCH_LOCK = threading.Lock()


class GridHang(TimeoutError):
    """A concurrent launch cannot finish (every program waiting) or did not finish in time."""


class _Stopped(Exception):
    """Raised inside a program's thread to end it (timeout, or another program failed)."""


class _Scheduler:
    """The turn (which program runs), the programs still alive, and whether they can still go on."""

    def __init__(self, programs: Sequence[Tuple[int, int, int]], seed: int):
        self.programs = list(programs)
        self.live: List[int] = list(range(len(self.programs)))
        self.turn: Optional[int] = None
        self.stopped = False
        self.error: Optional[Tuple[Tuple[int, int, int], BaseException]] = None
        self.stuck: Optional[List[Tuple[int, int, int]]] = None
        self.wrote = False  # by the program holding the turn, since it took it
        self._idle = [0] * len(self.programs)  # consecutive turns each program ended without writing
        self._rng = random.Random(seed)
        self._cond = threading.Condition()

    # -- called by the program that holds the turn --------------------------------------------

    def check(self):
        """Raise :class:`_Stopped` in a program that should end."""
        if self.stopped:
            raise _Stopped()

    def pass_turn(self):
        """After an atomic: hand the turn to a live program (maybe this one) and wait for it to come back."""
        me = self.turn
        with self._cond:
            self._end_turn(me, finished=False)
            self.turn = self._rng.choice(self.live)
            self._cond.notify_all()
        self.wait_turn(me)

    def _end_turn(self, me: int, finished: bool):
        """Count the turn that ends as idle or not; stop everything once every live program is stuck."""
        if self.wrote:
            self._idle = [0] * len(self.programs)  # a write may be what the others wait for
            self.wrote = False
        elif not finished:
            self._idle[me] += 1
        live = [i for i in self.live if i != me] if finished else self.live
        if live and not self.stopped and all(self._idle[i] >= STALL_TURNS for i in live):
            self.stuck = [self.programs[i] for i in live]
            self.stopped = True

    def wait_turn(self, index: int):
        with self._cond:
            self._cond.wait_for(lambda: self.turn == index or self.stopped)
        self.check()
        interpreter.interpreter_builder.set_grid_idx(*self.programs[index])

    def finish(self, index: int, error: Optional[BaseException]):
        with self._cond:
            if error is not None and not self.stopped:
                self.error = (self.programs[index], error)
                self.stopped = True
            self._end_turn(index, finished=True)
            self.live.remove(index)
            self.turn = self._rng.choice(self.live) if self.live else None
            self._cond.notify_all()

    # -- called by the launching thread ----------------------------------------------------------

    def start(self):
        with self._cond:
            self.turn = self._rng.choice(self.live)
            self._cond.notify_all()

    def wait_all(self, timeout_s: float) -> bool:
        """Whether every program ended (finished or stopped) within ``timeout_s``."""
        with self._cond:
            return self._cond.wait_for(lambda: not self.live, timeout_s)

    def stop(self) -> List[Tuple[int, int, int]]:
        """Stop every program; returns those that were still running."""
        with self._cond:
            running = [self.programs[i] for i in self.live]
            self.stopped = True
            self._cond.notify_all()
        return running


def _atomic_wrote(ptr, mask: np.ndarray, old) -> bool:
    """Whether an atomic changed memory: the values now there differ from those it returned (the old ones)."""
    now = interpreter._interpreter.load(ptr.data, mask, np.zeros_like(old.data), old.data.dtype)
    return bool(np.any((now != old.data) & mask))


@contextlib.contextmanager
def _scheduled_builder(scheduler: _Scheduler):
    """The interpreter's builder with stopping points at loads and stores, turn points at atomics."""
    builder = interpreter.interpreter_builder
    load, store = builder.create_masked_load, builder.create_masked_store  # create_load/store call these
    rmw, cas = builder.create_atomic_rmw, builder.create_atomic_cas

    def masked_load(*args, **kwargs):
        scheduler.check()
        return load(*args, **kwargs)

    def masked_store(ptrs, value, mask, *rest, **kwargs):
        scheduler.check()
        scheduler.wrote |= bool(np.any(mask.data))
        return store(ptrs, value, mask, *rest, **kwargs)

    def atomic_rmw(op, ptr, val, mask, *rest, **kwargs):
        scheduler.check()
        old = rmw(op, ptr, val, mask, *rest, **kwargs)
        scheduler.wrote |= _atomic_wrote(ptr, mask.data, old)
        scheduler.pass_turn()
        return old

    def atomic_cas(ptr, cmp, val, *rest, **kwargs):
        scheduler.check()
        old = cas(ptr, cmp, val, *rest, **kwargs)
        scheduler.wrote |= _atomic_wrote(ptr, np.ones(old.data.shape, dtype=bool), old)
        scheduler.pass_turn()
        return old

    hooks = dict(create_masked_load=masked_load, create_masked_store=masked_store,
                 create_atomic_rmw=atomic_rmw, create_atomic_cas=atomic_cas)
    for name, hook in hooks.items():  # instance attributes shadow the class's methods, for this launch only
        setattr(builder, name, hook)
    try:
        yield
    finally:
        for name in hooks:
            vars(builder).pop(name, None)


def _program_body(scheduler: _Scheduler, index: int, fn, args: Dict):
    error = None
    try:
        scheduler.wait_turn(index)
        fn(**args)
    except BaseException as exc:  # noqa: BLE001 - handed to the launching thread
        error = None if scheduler.stopped else exc
    finally:
        scheduler.finish(index, error)


class _ConcurrentGridExecutor(interpreter.GridExecutor):
    """``GridExecutor`` with its program loop replaced by one thread per program.

    The set-up mirrors ``GridExecutor.__call__`` of Triton 3.x (arguments to
    host tensors, ``triton.language`` patched for the interpreter, the
    launch's side effects copied back), reusing its helpers.
    """

    def __init__(self, fn, arg_names, grid, pre_run_hooks, name: str, timeout_s: float, seed: int):
        super().__init__(fn, arg_names, grid, pre_run_hooks)
        self.name = name
        self.timeout_s = timeout_s
        self.seed = seed

    def __call__(self, *args_dev, **kwargs):
        argspec = inspect.getfullargspec(self.fn)
        kwargs = {k: v for k, v in kwargs.items() if k in argspec.args}  # launch options such as num_warps
        args_hst, kwargs_hst = self._init_args_hst(args_dev, kwargs)
        for hook in self.pre_run_hooks:
            hook(*args_hst, **kwargs_hst)
        patch_scope = interpreter._patch_lang(self.fn)
        try:
            args = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
            args = {name: arg if name in self.constexprs else interpreter._implicit_cvt(arg)
                    for name, arg in args.items()}
            grid = self.grid(args) if callable(self.grid) else self.grid
            grid = tuple(grid) + (1,) * (3 - len(grid))
            interpreter.interpreter_builder.set_grid_dim(*grid)
            self._run_programs(args, grid)
        finally:
            patch_scope.restore()
        self._restore_args_dev(args_dev, args_hst, kwargs, kwargs_hst)

    def _run_programs(self, args: Dict, grid: Tuple[int, int, int]):
        programs = [(x, y, z) for x in range(grid[0]) for y in range(grid[1]) for z in range(grid[2])]
        if not programs:
            return
        scheduler = _Scheduler(programs, self.seed)
        threads = [threading.Thread(target=_program_body, args=(scheduler, i, self.fn, args), daemon=True,
                                    name=f"{self.name}{p}") for i, p in enumerate(programs)]
        with _scheduled_builder(scheduler):
            for thread in threads:
                thread.start()
            scheduler.start()
            running = None if scheduler.wait_all(self.timeout_s) else scheduler.stop()
            _join(threads, _STOP_GRACE_S)
        if scheduler.stuck is not None:
            raise GridHang(f"{self.name}: programs {scheduler.stuck} (of {len(programs)}) all wait and none can "
                           f"go on: each polled {STALL_TURNS} times with nothing written (a grid barrier that "
                           "never opens?)")
        if running is not None:
            raise GridHang(f"{self.name}: {len(running)} of {len(programs)} programs still running after "
                           f"{self.timeout_s:g} s, stopped: {running}")
        if scheduler.error is not None:
            program, exc = scheduler.error
            raise InterpreterError(f"{self.name} program {program}: {exc!r}") from exc


def _join(threads: Sequence[threading.Thread], timeout_s: float):
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def launch(kernel, grid, *args, timeout_s: Optional[float] = None, seed: Optional[int] = None, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)`` with every program alive at once (see the module docstring).

    ``kernel`` is a ``@triton.jit`` function under ``TRITON_INTERPRET=1``
    (an ``InterpretedFunction``); ``grid`` a tuple or a callable of the
    arguments, as for a launch.  ``timeout_s`` defaults to :data:`TIMEOUT_S`
    (``FUSEDRNN_TRITON_GRID_TIMEOUT``); ``seed``, the schedule, to :data:`SEED`
    (``FUSEDRNN_TRITON_GRID_SEED``).
    """
    if not isinstance(kernel, interpreter.InterpretedFunction):
        raise TypeError(f"{getattr(kernel, '__name__', kernel)!r} is not an interpreted kernel: "
                        "the concurrent launcher needs TRITON_INTERPRET=1 set before the kernel was defined")
    executor = _ConcurrentGridExecutor(kernel.rewrite(), kernel.arg_names, grid, kernel.pre_run_hooks,
                                       kernel.__name__, TIMEOUT_S if timeout_s is None else timeout_s,
                                       SEED if seed is None else seed)
    with _LAUNCH_LOCK:
        executor(*args, **kwargs)
