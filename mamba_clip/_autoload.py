"""Start-up hook installed as ``mamba_clip_autoload.pth``.

Python executes the ``.pth`` line at interpreter start. This module only appends a finder to
``sys.meta_path`` (standard library only, no torch): when ``timm`` is imported, our timm models are
registered right after timm finishes loading; when ``open_clip`` is imported, our model configs and
pretrained tags are added to it. That is what lets the unmodified ``open_clip_train.main`` and
``clip_benchmark`` see ``--model vmamba-s``. Set ``MAMBA_CLIP_NO_AUTOLOAD=1`` to switch it off.

It also sets ``GOMP_SPINCOUNT=1000`` unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set (issue 17).
torch's intra-op pool and our C kernel share one OpenMP runtime (torch's bundled libgomp, which
satisfies the kernel's ``libgomp.so.1`` too), and libgomp reads its settings once, when torch loads
it, so this hook is the only place that runs early enough. By default an idle libgomp worker spins
300,000 times after every parallel region before it sleeps; with another process on the core it
burns the time slice the lagging thread of the same team needs, and every one of a tower's hundreds
of short regions ends in a barrier. 1000 is the count libgomp itself switches to when it knows the
machine is oversubscribed (more threads than CPUs); it cannot see other processes.
"""

from __future__ import annotations

import os
import sys

# No importlib.abc / warnings imports at module level: they pull in tempfile, pathlib, ... and this
# module runs in every Python process of the environment. Finder and loader are duck-typed.

# module whose import triggers the hook -> function run after it is loaded
_TRIGGERS = {
    "timm": ("mamba_clip.models", None),
    "open_clip": ("mamba_clip.openclip_ext.registry", "register_open_clip"),
}


def _run_trigger(name: str) -> None:
    import importlib

    module_name, func = _TRIGGERS[name]
    try:
        module = importlib.import_module(module_name)
        if func is not None:
            getattr(module, func)()
    except Exception as exc:  # never break the host import
        import warnings

        warnings.warn(f"mamba_clip: could not register with {name}: {exc!r}", stacklevel=2)


class _LoaderProxy:
    def __init__(self, loader, name: str):
        self._loader = loader
        self._name = name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _run_trigger(self._name)

    def __getattr__(self, item):
        return getattr(self._loader, item)


class _AfterImportFinder:
    def find_spec(self, fullname, path, target=None):
        if fullname not in _TRIGGERS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _LoaderProxy(spec.loader, fullname)
        return spec


OPENMP_SPIN_DEFAULT = {"GOMP_SPINCOUNT": "1000"}
_OPENMP_USER_KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def openmp_defaults(environ=os.environ) -> dict:
    """Set our OpenMP wait default in ``environ`` unless the user chose a wait policy or spin count;
    returns what was set. Effective only before the OpenMP runtime loads (i.e. before torch)."""
    if any(k in environ for k in _OPENMP_USER_KNOBS):
        return {}
    environ.update(OPENMP_SPIN_DEFAULT)
    return dict(OPENMP_SPIN_DEFAULT)


def install() -> None:
    if os.environ.get("MAMBA_CLIP_NO_AUTOLOAD"):
        return
    openmp_defaults()
    if any(isinstance(f, _AfterImportFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _AfterImportFinder())
    # Already imported before the hook existed (e.g. importing the hook late): register now.
    for name in _TRIGGERS:
        if name in sys.modules:
            _run_trigger(name)


install()
