"""This site's result stores as the agent uses them: built once, chosen per step, matched to
references.

``build_stores`` turns the validated ``[result_stores.NAME]`` tables into stores when the agent
starts (an error names the table, and the agent does not start). ``choose_store`` picks the
store a step's result goes to: the one the step named, else the environment's default.
``locate`` finds which object of a store a reference names, without trusting its URI: the
reference's URI must be exactly what the store itself would call one of its keys.
"""

from __future__ import annotations

import logging
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from agent.bounds import HOW_TO_RETURN_A_REFERENCE
from agent.results._base import ResultLocation, ResultStore, check_key
from agent.results._errors import InvalidKey, ResultStoreConfigError
from agent.results.config import ResultStoresConfig, build_store
from agent.results.filesystem import FilesystemStore
from meridian.core.errors import MeridianError
from meridian.core.resultref import ResultRef

log = logging.getLogger("meridian.agent.results")


class UnknownResultStore(MeridianError):
    """A step named a store this agent does not have: permanent, retrying cannot help here."""


class NoResultStore(MeridianError):
    """A result must be stored but this agent has no store: permanent, like a result too
    large to travel (the environment's agents share their configuration)."""


def build_stores(config: ResultStoresConfig) -> dict[str, ResultStore]:
    """Every configured store, built once (blocking: a filesystem store creates its root).

    Raises:
        ResultStoreConfigError: naming the table of the store that could not be opened.
    """
    stores: dict[str, ResultStore] = {}
    for name, store_config in config.stores.items():
        try:
            stores[name] = build_store(store_config)
        except ResultStoreConfigError:
            raise
        except Exception as exc:
            raise ResultStoreConfigError(
                f"[result_stores.{name}]: cannot open the {store_config.type} store: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        log.info("result store %r (%s) ready", name, store_config.type)
    return stores


def choose_store(
    stores: Mapping[str, ResultStore], default: str, requested: str, size: int | None = None
) -> ResultStore:
    """The store a step's result (of ``size`` bytes, if known) goes to.

    Raises:
        UnknownResultStore: the step named a store this agent does not have.
        NoResultStore: the step named none and this agent has no default store.
    """
    if requested:
        store = stores.get(requested)
        if store is None:
            have = ", ".join(sorted(stores)) or "none"
            raise UnknownResultStore(
                f"the step names result store {requested!r}, which this agent does not have "
                f"(its stores: {have}); add [result_stores.{requested}] to the agent config "
                "of this environment, or name one of its stores"
            )
        return store
    store = stores.get(default) if default else None
    if store is None:
        what = f"the step's result is {size} bytes" if size is not None else "the step's result"
        raise NoResultStore(
            f"{what}, at or above its inline threshold, so it must stay at the site, but this "
            "agent has no result store: add a [result_stores.NAME] table to the agent config "
            f"(docs/results.md), or {HOW_TO_RETURN_A_REFERENCE}"
        )
    return store


def locate(store: ResultStore, ref: ResultRef) -> ResultLocation | None:
    """The location in ``store`` that ``ref`` names, or None when ``ref.uri`` is not one of
    its objects. Only keys the store itself turns into exactly that URI are accepted."""
    if ref.store != store.name:
        return None
    parts = ref.uri.split("/")
    # A key has at most 32 segments; try each suffix of the URI's path, as written and
    # percent-decoded (some services quote characters a key may hold).
    for start in range(max(0, len(parts) - 32), len(parts)):
        suffix = "/".join(parts[start:])
        for key in dict.fromkeys((suffix, urllib.parse.unquote(suffix))):
            try:
                check_key(key)
            except InvalidKey:
                continue
            location = store.location(key, ref.size, ref.sha256)
            if location.uri == ref.uri:
                return location
    return None


def local_path(store: ResultStore, location: ResultLocation) -> Path | None:
    """The file holding ``location`` when ``store`` keeps objects as files on this host."""
    if not isinstance(store, FilesystemStore) or not location.uri.startswith("file://"):
        return None
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(location.uri).path))
