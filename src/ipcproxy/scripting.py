"""Loading users' interceptor scripts."""

from __future__ import annotations

import importlib.util
import os
import sys

from . import api
from .chain import Interceptor
from .inputs import InputFileError, open_input


class ScriptError(ValueError):
    """A script that cannot be loaded; reported as one line."""


def load_script(path: str) -> list[Interceptor]:
    try:
        open_input(path, "script").close()  # a regular file: a FIFO or a device would hang the import
    except InputFileError as exc:
        raise ScriptError(str(exc)) from None
    name = f"ipcproxy_script_{abs(hash(os.path.abspath(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ScriptError(f"script {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    # like `python FILE.py`: modules next to the script can be imported (after installed ones)
    here = os.path.dirname(os.path.abspath(path))
    if here not in sys.path:
        sys.path.append(here)
    api.take_registered()
    try:
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        api.take_registered()
        raise ScriptError(f"script {path}, line {exc.lineno}: {exc.msg}") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code
        api.take_registered()
        raise ScriptError(f"script {path} failed to load: {type(exc).__name__}: {exc}") from None
    found = api.take_registered()
    for obj in getattr(module, "interceptors", []):
        if not isinstance(obj, Interceptor):
            raise ScriptError(f"script {path}: {obj!r} in `interceptors` has no name/fail_closed/intercept")
        found.append(obj)
    if not found:
        raise ScriptError(f"script {path} defines no interceptor (use @interceptor or an `interceptors` list)")
    return found
