"""Load a flow from an entrypoint ``"path/to/flows.py:flow_name"``.

The directory of the flow file is the bundle root: it is what gets packed and shipped to
agents, and agents put it on ``sys.path``. So the file is imported here the same way — with
the root on ``sys.path`` and under the module name derived from its path relative to the
root — and every step's ``__module__`` is exactly the name an agent will import.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from meridian.core.errors import MeridianError, NotFound, ValidationError
from meridian.sdk.flow import Flow


@dataclass(frozen=True)
class LoadedFlow:
    """A flow found in a file, with what the runner needs to ship its code."""

    flow: Flow[..., Any]
    root: Path
    module_name: str
    file: Path


def split_entrypoint(entrypoint: str) -> tuple[Path, str | None]:
    """``"dir/flows.py:name"`` -> (path, name); the name may be omitted."""
    path_text, sep, name = entrypoint.rpartition(":")
    # No ':' (or a Windows drive letter only): the whole text is the path.
    if not sep or not path_text or (len(path_text) == 1 and path_text.isalpha()):
        return Path(entrypoint), None
    return Path(path_text), name.strip() or None


def module_name_for(file: Path, root: Path) -> str:
    """The dotted module name of ``file`` relative to ``root`` (e.g. ``etl.flows``)."""
    relative = file.relative_to(root).with_suffix("")
    parts = relative.parts
    if not parts or not all(part.isidentifier() for part in parts):
        raise ValidationError(
            f"{file}: the file name must be a valid Python module name "
            f"(got {'.'.join(parts)!r}); rename it, e.g. to {_suggest(file.stem)}.py"
        )
    return ".".join(parts)


def _suggest(stem: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in stem)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"flows_{cleaned}"


def load_entrypoint(entrypoint: str) -> LoadedFlow:
    """Import the flow file and return the named flow.

    Raises:
        NotFound: the file does not exist, or it defines no flow of that name (the message
            lists the flows it does define).
        ValidationError: the entrypoint is malformed or importing the file failed.
    """
    path, flow_name = split_entrypoint(entrypoint)
    file = path.expanduser().resolve()
    if not file.is_file():
        raise NotFound(f"flow file not found: {path}")
    if file.suffix != ".py":
        raise ValidationError(f"{path}: a flow entrypoint must be a .py file")
    root = file.parent
    module_name = module_name_for(file, root)
    module = _import_file(file, root, module_name)
    flows = {obj.name: obj for obj in vars(module).values() if isinstance(obj, Flow)}
    return LoadedFlow(_pick(flows, flow_name, path), root, module_name, file)


def _pick(flows: dict[str, Flow[..., Any]], flow_name: str | None, path: Path) -> Flow[..., Any]:
    defined = ", ".join(sorted(flows)) or "none (decorate a function with @flow)"
    if flow_name is None:
        if len(flows) == 1:
            return next(iter(flows.values()))
        raise ValidationError(
            f"{path} defines several flows or none; name one as {path}:NAME "
            f"(flows defined: {defined})"
        )
    if flow_name not in flows:
        raise NotFound(f"no flow named {flow_name!r} in {path} (flows defined: {defined})")
    return flows[flow_name]


def _import_file(file: Path, root: Path, module_name: str) -> ModuleType:
    root_text = str(root)
    if root_text not in sys.path:
        sys.path.insert(0, root_text)
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ValidationError(f"cannot import {file} as module {module_name!r}")
    module = importlib.util.module_from_spec(spec)
    # Registered before executing so dataclasses, pickling and `from x import y` inside the
    # module resolve it; replaced if another file of the same name was loaded before.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except MeridianError:
        sys.modules.pop(module_name, None)
        raise
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ValidationError(
            f"importing {file} failed: {type(exc).__name__}: {exc}{_where(exc, file)}"
        ) from exc
    return module


def _where(exc: BaseException, file: Path) -> str:
    """`` (at flows.py:12)`` for the deepest frame of the error inside the flow file."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == file:
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is None and isinstance(exc, SyntaxError) and exc.lineno:
        line = exc.lineno
    return f" (at {file.name}:{line})" if line else ""
