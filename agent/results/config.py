"""The agent config's ``[result_stores.NAME]`` tables: parsed, validated, turned into stores.

::

    [result_stores.scratch]
    type = "filesystem"
    root = "/scratch/meridian/results"
    retention_days = 14

    [result_stores.s3-main]
    type = "s3"
    bucket = "acme-meridian-results"
    prefix = "prod/"
    region = "eu-west-1"
    retention_days = 30
    default = true              # the environment's default store

Each table has ``type`` (``filesystem``, ``s3``, ``gcs``, ``azure_blob``), the options of its
backend (the fields of ``FilesystemConfig``, ``S3Config``, ``GcsConfig``, ``AzureBlobConfig``),
an optional ``retention_days`` and ``default``. One store is the default: the one marked
``default = true``, or the only one. ``presign_transfers = true`` (object stores only) lets
the agent answer a transfer to another environment with a presigned URL valid for
``presign_ttl_s`` seconds (30..3600, default 300) instead of relaying the bytes.

The ``[transfers]`` table holds how this agent takes results of other environments
(``TransferSettings``): ``accept_presigned_urls`` (default true),
``allow_http_presigned_urls`` (default false: only https URLs are followed; emulators need
http) and ``presigned_url_hosts``, the hosts it downloads presigned URLs from: exact hosts or
``.suffix`` entries (any host ending with it), IP addresses only as exact entries. By default
the clouds' storage endpoints (``DEFAULT_PRESIGNED_URL_HOSTS``); a list replaces them (on-prem
MinIO, emulators: ``["127.0.0.1"]``). It travels on ``ResultStoresConfig.transfers``, beside
the stores.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.results._base import ResultStore, check_prefix
from agent.results._errors import InvalidKey, ResultStoreConfigError
from agent.results.azure_blob import MAX_BLOCK_SIZE, AzureBlobConfig, AzureBlobStore
from agent.results.filesystem import FilesystemConfig, FilesystemStore
from agent.results.gcs import CHUNK_QUANTUM, GcsConfig, GcsStore
from agent.results.s3 import MAX_PART_SIZE, MIN_PART_SIZE, S3Config, S3Store

BackendConfig = FilesystemConfig | S3Config | GcsConfig | AzureBlobConfig
_BACKENDS: dict[str, type[BackendConfig]] = {
    "filesystem": FilesystemConfig,
    "s3": S3Config,
    "gcs": GcsConfig,
    "azure_blob": AzureBlobConfig,
}
_COMMON = frozenset({"type", "retention_days", "default", "presign_transfers", "presign_ttl_s"})
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
MAX_STORES = 32
MAX_RETENTION_DAYS = 36500
MAX_OPTION_LENGTH = 4096
# A presigned URL is a bearer credential: short-lived, but long enough for a large download to
# start (the download itself may outlast it: the services check expiry when a request starts).
DEFAULT_PRESIGN_TTL_S = 300
MIN_PRESIGN_TTL_S = 30
MAX_PRESIGN_TTL_S = 3600
_TRANSFER_FLAGS = frozenset({"accept_presigned_urls", "allow_http_presigned_urls"})
_TRANSFER_KEYS = _TRANSFER_FLAGS | {"presigned_url_hosts"}
# Amazon S3's endpoints (its host name patterns, agent.presigned.is_s3_host), not every name
# under amazonaws.com: load balancers and instances there can resolve to private addresses.
S3_HOSTS = "@s3"
# Where presigned URLs of S3, GCS and Azure Blob point (their public, China and US government
# endpoints): a consumer downloads from these hosts only, unless its config lists others.
DEFAULT_PRESIGNED_URL_HOSTS = (
    S3_HOSTS,
    "storage.googleapis.com",
    ".blob.core.windows.net",
    ".blob.core.chinacloudapi.cn",
    ".blob.core.usgovcloudapi.net",
)
MAX_URL_HOSTS = 64
MAX_HOST_LENGTH = 253
_LABEL_RE = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


@dataclass(frozen=True)
class StoreConfig:
    name: str
    type: str
    backend: BackendConfig
    retention_days: int | None = None
    # Answer transfers to other environments with a presigned URL (opt-in per store).
    presign_transfers: bool = False
    presign_ttl_s: int = DEFAULT_PRESIGN_TTL_S


@dataclass(frozen=True)
class TransferSettings:
    """How this agent takes results of other environments (the ``[transfers]`` table)."""

    # Ask for a presigned URL when the producing site offers one (else always the relay).
    accept_presigned_urls: bool = True
    # Follow http:// URLs too (emulators); https only by default.
    allow_http_presigned_urls: bool = False
    # The hosts presigned URLs may point to: exact hosts (IP addresses included) or ".suffix".
    presigned_url_hosts: tuple[str, ...] = DEFAULT_PRESIGNED_URL_HOSTS


@dataclass(frozen=True)
class ResultStoresConfig:
    stores: Mapping[str, StoreConfig]
    default: str | None
    transfers: TransferSettings = dataclasses.field(default_factory=TransferSettings)

    def presigning(self) -> dict[str, int]:
        """The stores that answer transfers with presigned URLs: name -> URL lifetime (s)."""
        return {n: c.presign_ttl_s for n, c in self.stores.items() if c.presign_transfers}

    def build(self) -> dict[str, ResultStore]:
        return {name: build_store(config) for name, config in self.stores.items()}


def parse_result_stores(table: Any) -> ResultStoresConfig:
    """Validate the ``result_stores`` table of the agent config.

    Raises:
        ResultStoreConfigError: naming the table (``[result_stores.NAME]``) and the problem.
    """
    if table is None:
        return ResultStoresConfig({}, None)
    if not isinstance(table, Mapping):
        raise ResultStoreConfigError("[result_stores] must be a table of stores")
    if len(table) > MAX_STORES:
        raise ResultStoreConfigError(f"[result_stores] has more than {MAX_STORES} stores")
    stores: dict[str, StoreConfig] = {}
    defaults: list[str] = []
    for name, raw in table.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ResultStoreConfigError(
                f"[result_stores.{name}]: a store name is 1-63 lowercase letters, digits, "
                "'-' or '_'"
            )
        stores[name], is_default = _parse_store(name, raw)
        if is_default:
            defaults.append(name)
    if len(defaults) > 1:
        raise ResultStoreConfigError(
            f"[result_stores]: only one store can be the default; {', '.join(defaults)} say "
            "default = true"
        )
    if not defaults and len(stores) > 1:
        raise ResultStoreConfigError(
            f"[result_stores]: {len(stores)} stores and none is the default; set "
            "default = true on one"
        )
    default = defaults[0] if defaults else next(iter(stores), None)
    return ResultStoresConfig(stores, default)


def build_store(config: StoreConfig) -> ResultStore:
    """Create the store (cloud SDKs are imported here, so an unused backend needs none)."""
    backend = config.backend
    try:
        if isinstance(backend, FilesystemConfig):
            return FilesystemStore(config.name, backend)
        if isinstance(backend, S3Config):
            return S3Store(config.name, backend)
        if isinstance(backend, GcsConfig):
            return GcsStore(config.name, backend)
        return AzureBlobStore(config.name, backend)
    except ImportError as exc:
        extra = {"s3": "aws", "gcs": "gcp", "azure_blob": "azure"}.get(config.type, "")
        raise ResultStoreConfigError(
            f"[result_stores.{config.name}]: type {config.type!r} needs {exc.name}: pip "
            f"install 'meridian-orchestrator[{extra}]'"
        ) from None


def _parse_store(name: str, raw: Any) -> tuple[StoreConfig, bool]:
    where = f"[result_stores.{name}]"
    if not isinstance(raw, Mapping):
        raise ResultStoreConfigError(f"{where} must be a table")
    kind = raw.get("type")
    if kind not in _BACKENDS:
        raise ResultStoreConfigError(
            f"{where}: type must be one of {', '.join(sorted(_BACKENDS))}, not {kind!r}"
        )
    cls = _BACKENDS[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - _COMMON - set(fields))
    if unknown:
        raise ResultStoreConfigError(
            f"{where}: unknown keys {', '.join(unknown)} for type {kind!r} (known: "
            f"{', '.join(sorted(_COMMON | set(fields)))})"
        )
    options: dict[str, Any] = {}
    for field_name, field in fields.items():
        if field_name in raw:
            options[field_name] = _typed(where, field_name, raw[field_name], field.default)
        elif field.default is dataclasses.MISSING:
            raise ResultStoreConfigError(f"{where}: type {kind!r} needs {field_name!r}")
    backend = cls(**options)
    _check_backend(where, backend)
    retention = raw.get("retention_days")
    if retention is not None and (
        type(retention) is not int or not 1 <= retention <= MAX_RETENTION_DAYS
    ):
        raise ResultStoreConfigError(
            f"{where}: retention_days must be an integer from 1 to {MAX_RETENTION_DAYS}"
        )
    is_default = raw.get("default", False)
    if type(is_default) is not bool:
        raise ResultStoreConfigError(f"{where}: default must be true or false")
    presign, ttl = _presign_options(where, kind, raw)
    return StoreConfig(name, kind, backend, retention, presign, ttl), is_default


def _presign_options(where: str, kind: str, raw: Mapping[str, Any]) -> tuple[bool, int]:
    presign = raw.get("presign_transfers", False)
    if type(presign) is not bool:
        raise ResultStoreConfigError(f"{where}: presign_transfers must be true or false")
    if presign and kind == "filesystem":
        raise ResultStoreConfigError(
            f"{where}: presign_transfers needs an object store (s3, gcs, azure_blob); a "
            "filesystem store cannot hand out URLs, its results are relayed"
        )
    ttl = raw.get("presign_ttl_s", DEFAULT_PRESIGN_TTL_S)
    if type(ttl) is not int or not MIN_PRESIGN_TTL_S <= ttl <= MAX_PRESIGN_TTL_S:
        raise ResultStoreConfigError(
            f"{where}: presign_ttl_s must be an integer from {MIN_PRESIGN_TTL_S} to "
            f"{MAX_PRESIGN_TTL_S} (seconds a presigned URL stays valid)"
        )
    return presign, ttl


def parse_transfer_settings(table: Any) -> TransferSettings:
    """Validate the ``[transfers]`` table of the agent config (None: the defaults).

    Raises:
        ResultStoreConfigError: naming the key and the problem.
    """
    if table is None:
        return TransferSettings()
    if not isinstance(table, Mapping):
        raise ResultStoreConfigError("[transfers] must be a table")
    unknown = sorted(set(table) - _TRANSFER_KEYS)
    if unknown:
        raise ResultStoreConfigError(
            f"[transfers]: unknown keys {', '.join(map(str, unknown))} (known: "
            f"{', '.join(sorted(_TRANSFER_KEYS))})"
        )
    options: dict[str, Any] = {}
    for key, value in table.items():
        if key == "presigned_url_hosts":
            options[key] = _url_hosts(value)
        elif type(value) is not bool:
            raise ResultStoreConfigError(f"[transfers]: {key} must be true or false")
        else:
            options[key] = value
    return TransferSettings(**options)


def _url_hosts(value: Any) -> tuple[str, ...]:
    """The ``presigned_url_hosts`` list, checked and normalized (lowercase, IPs canonical)."""
    where = "[transfers]: presigned_url_hosts"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ResultStoreConfigError(
            f'{where} must be a list of hosts, e.g. [".amazonaws.com", "minio.example.com"]'
        )
    if not value:
        raise ResultStoreConfigError(
            f"{where} is empty: to never download from a presigned URL, set "
            "accept_presigned_urls = false"
        )
    if len(value) > MAX_URL_HOSTS:
        raise ResultStoreConfigError(f"{where} has more than {MAX_URL_HOSTS} entries")
    return tuple(dict.fromkeys(_url_host(where, entry) for entry in value))


def _url_host(where: str, entry: str) -> str:
    if entry.strip().lower() == S3_HOSTS:
        return S3_HOSTS
    if len(entry) > MAX_HOST_LENGTH + 1:
        raise ResultStoreConfigError(f"{where}: an entry is longer than {MAX_HOST_LENGTH}")
    text = entry.strip().lower()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text[1:] if text.startswith(".") else text
    labels = name.split(".")
    if not name or not all(_LABEL_RE.match(label) for label in labels):
        raise ResultStoreConfigError(
            f"{where}: {entry[:100]!r} is not a host name, an IP address, a '.suffix' or "
            f'{S3_HOSTS!r} (no scheme, port, path or wildcard: write ".example.com" for its '
            "subdomains)"
        )
    if not text.startswith(".") and all(label.isdigit() for label in labels):
        raise ResultStoreConfigError(f"{where}: {entry[:100]!r} is not a valid IP address")
    return text


def _typed(where: str, key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if type(value) is not bool:
            raise ResultStoreConfigError(f"{where}: {key} must be true or false")
        return value
    if isinstance(default, int):
        if type(value) is not int or value <= 0:
            raise ResultStoreConfigError(f"{where}: {key} must be a positive integer")
        return value
    if not isinstance(value, str) or not value.strip():
        raise ResultStoreConfigError(f"{where}: {key} must be a non-empty string")
    if len(value) > MAX_OPTION_LENGTH:
        raise ResultStoreConfigError(f"{where}: {key} is longer than {MAX_OPTION_LENGTH}")
    return Path(value) if key == "root" else value


def _check_backend(where: str, backend: BackendConfig) -> None:
    if isinstance(backend, FilesystemConfig):
        if not backend.root.is_absolute():
            raise ResultStoreConfigError(f"{where}: root must be an absolute path")
        return
    if backend.prefix:
        try:
            check_prefix(backend.prefix)
        except InvalidKey as exc:
            raise ResultStoreConfigError(f"{where}: prefix: {exc}") from None
        if not backend.prefix.endswith("/"):
            raise ResultStoreConfigError(f"{where}: prefix must end with '/'")
    if isinstance(backend, S3Config) and not MIN_PART_SIZE <= backend.part_size <= MAX_PART_SIZE:
        raise ResultStoreConfigError(
            f"{where}: part_size must be from {MIN_PART_SIZE} to {MAX_PART_SIZE} bytes"
        )
    if isinstance(backend, GcsConfig) and backend.chunk_size % CHUNK_QUANTUM:
        raise ResultStoreConfigError(f"{where}: chunk_size must be a multiple of {CHUNK_QUANTUM}")
    if isinstance(backend, AzureBlobConfig):
        if backend.block_size > MAX_BLOCK_SIZE:
            raise ResultStoreConfigError(f"{where}: block_size must be at most {MAX_BLOCK_SIZE}")
        if (backend.account_url is None) == (backend.connection_string is None):
            raise ResultStoreConfigError(
                f"{where}: set exactly one of account_url (DefaultAzureCredential) and "
                "connection_string"
            )
