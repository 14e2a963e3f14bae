"""The compiled extension ``fusedrnn._C``: it loads where it was built, and fusedrnn lives without it.

The fallback tests run in a fresh interpreter (a subprocess) because whether
``fusedrnn._C`` loaded is decided once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fusedrnn
from fusedrnn import _extension

#: set by `make test`: a missing or broken extension is then a failure, not a skip
REQUIRED = os.environ.get("FUSEDRNN_REQUIRE_EXTENSION") == "1"
PACKAGE_DIR = os.path.dirname(os.path.abspath(fusedrnn.__file__))
REPO_ROOT = os.path.dirname(PACKAGE_DIR)


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter that imports this checkout's fusedrnn; its last stdout line is JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSEDRNN_")}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"subprocess failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_extension_loads_where_it_was_built():
    module = _extension.load()
    if module is None:
        reason = _extension.load_error()
        if REQUIRED:
            pytest.fail(f"FUSEDRNN_REQUIRE_EXTENSION=1 but {reason}")
        pytest.skip(f"fusedrnn._C is not built in this checkout: {reason}")
    assert _extension.load_error() is None
    # the extension beside this package, not a stale build from another install
    assert os.path.dirname(os.path.abspath(module.__file__)) == PACKAGE_DIR
    assert _extension.has_cuda() == torch.ops.fusedrnn_C.built_with_cuda()
    if torch.version.cuda is None:
        assert not _extension.has_cuda(), "CUDA kernels cannot have been built against a torch without CUDA"


# Makes `import fusedrnn._C` and `import triton` fail, as on a machine where the
# build failed and Triton is not installed; prints what the test checks as JSON.
FALLBACK_SCRIPT = """
    import importlib.abc, json, sys, warnings

    EXTENSION_REASON = "simulated build failure: fusedrnn._C blocked by test_extension"
    TRITON_REASON = "simulated: triton is not installed"

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "fusedrnn._C":
                raise ImportError(EXTENSION_REASON)
            if name == "triton" or name.startswith("triton."):
                raise ImportError(TRITON_REASON)
            return None

    sys.meta_path.insert(0, Block())

    import torch
    import fusedrnn
    import fusedrnn.backends
    import fusedrnn.functional
    from fusedrnn import reference
    from fusedrnn.backends.base import LayerWeights
    from fusedrnn.cells import CellSpec

    T, B, I, H = 3, 5, 3, 37
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, I, generator=g)
    h0, c0 = torch.randn(B, H, generator=g), torch.randn(B, H, generator=g)
    weights = LayerWeights(*(torch.randn(shape, generator=g) * 0.3 for shape in [(4 * H, I), (4 * H, H), (4 * H,), (4 * H,)]))
    expected = reference.sequence_forward(CellSpec("lstm", "lstm"), x, h0, c0, weights, None, False)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outputs = [fusedrnn.functional.lstm_layer(x, h0, c0, *weights[:4]) for _ in range(2)]
    chosen = fusedrnn.backends.resolve(None, CellSpec("lstm", "lstm"), x, weights).name

    print(json.dumps({
        "reason": EXTENSION_REASON,
        "runtime_warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
        "chosen": chosen,
        "matches_reference": all(
            torch.equal(o.out, expected.out) and torch.equal(o.h_n, expected.h_n) and torch.equal(o.c_n, expected.c_n)
            for o in outputs
        ),
        "report": fusedrnn.backends.report(),
        "extension_imported": "fusedrnn._C" in sys.modules,
    }))
"""


def test_without_extension_fusedrnn_falls_back_to_reference_and_warns_once():
    result = run_python(FALLBACK_SCRIPT)
    reason = result["reason"]
    assert result["chosen"] == "reference"
    assert result["matches_reference"], "the layer did not give the reference backend's numbers"
    naming_reason = [m for m in result["runtime_warnings"] if reason in m]
    assert len(naming_reason) == 1, f"expected one RuntimeWarning naming {reason!r} over two calls, got {result['runtime_warnings']}"
    assert "reference" in naming_reason[0], "the warning should say which backend runs instead"
    assert reason in result["report"], f"backends.report() does not say why the extension is missing:\n{result['report']}"
    assert not result["extension_imported"]


# Watches the first import of Triton and of the extension after torch is loaded,
# noting the innermost fusedrnn line that asked for it.
LIGHT_IMPORT_SCRIPT = """
    import importlib.abc, json, os, sys, traceback
    import torch  # whatever torch itself imports does not count

    PACKAGE_DIR = os.path.abspath("fusedrnn") + os.sep
    first_import = {}

    class Watch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name in ("triton", "fusedrnn._C") and name not in first_import:
                ours = [f for f in traceback.extract_stack() if os.path.abspath(f.filename).startswith(PACKAGE_DIR)]
                first_import[name] = f"{ours[-1].filename}:{ours[-1].lineno}" if ours else "outside fusedrnn"
            return None  # only watching: the normal finders do the import

    sys.meta_path.insert(0, Watch())
    import fusedrnn
    print(json.dumps({"imported": "fusedrnn" in sys.modules, "first_import": first_import}))
"""


def test_import_fusedrnn_loads_the_extension_but_not_triton():
    """The graph ops are the extension's (a saved program naming them loads after `import fusedrnn`):
    ops.py loads it, and nothing else does first; Triton waits until a backend needs it."""
    result = run_python(LIGHT_IMPORT_SCRIPT)
    assert result["imported"]
    first = result["first_import"]
    assert "triton" not in first, f"`import fusedrnn` imported triton (first asked for at {first['triton']})"
    if _extension.load() is not None:
        assert os.path.basename(first.get("fusedrnn._C", "").split(":")[0]) == "_extension.py", first
