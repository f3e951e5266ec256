"""Saved connection profiles: ``meridian login`` writes them, client commands read them.

``~/.config/meridian/config.toml`` (or ``$MERIDIAN_CONFIG_DIR/config.toml``), mode 0600 in a
0700 directory, because it holds API tokens::

    [profiles.default]
    control_plane = "cp.example.com:7443"
    ca_file = "/home/me/.config/meridian/ca.crt"
    token = "mat_..."

Command-line flags win over environment variables, which win over the profile.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from meridian.core.errors import ValidationError

ENV_CONFIG_DIR = "MERIDIAN_CONFIG_DIR"


def config_path() -> Path:
    base = os.environ.get(ENV_CONFIG_DIR) or str(Path.home() / ".config" / "meridian")
    return Path(base).expanduser() / "config.toml"


def load_profiles() -> dict[str, dict[str, Any]]:
    path = config_path()
    if not path.exists():
        return {}
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValidationError(f"cannot read {path}: {exc}") from exc
    profiles = raw.get("profiles", {})
    return {str(k): dict(v) for k, v in profiles.items() if isinstance(v, dict)}


def profile(name: str) -> dict[str, Any]:
    return load_profiles().get(name, {})


def save_profile(name: str, values: dict[str, str]) -> Path:
    """Write (or replace) one profile, keeping the others; the file is private (0600)."""
    profiles = load_profiles()
    profiles[name] = values
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    lines: list[str] = []
    for profile_name, entries in sorted(profiles.items()):
        lines.append(f"[profiles.{_key(profile_name)}]")
        lines += [f"{_key(k)} = {_string(str(v))}" for k, v in sorted(entries.items())]
        lines.append("")
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("\n".join(lines))
    os.replace(tmp, path)
    return path


def _key(text: str) -> str:
    if not text.replace("-", "").replace("_", "").isalnum():
        raise ValidationError(f"profile names and keys are letters, digits, '-' and '_': {text!r}")
    return text


def _string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
