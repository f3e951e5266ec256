"""gcp-sm and azure-kv resolvers against contract fakes (tests/agent/secret_fakes.py).

No emulator exists for Google Secret Manager or Azure Key Vault. The fakes implement the one
REST call each resolver makes, as documented; the real google-auth (service-account JWT grant
against the fake's token endpoint, ``AuthorizedSession``) and azure-core (bearer token policy
over HTTPS with a self-signed certificate trusted through ``ca_bundle``) drive the requests.
IAM/RBAC decisions are simulated by the fakes (403 answers), not enforced by a real service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.secrets import (
    AzureKeyVaultResolver,
    AzureKvConfig,
    GcpSecretManagerResolver,
    GcpSmConfig,
    SecretNotFound,
    SecretStore,
    SecretUnavailable,
)
from tests.agent.secret_fakes import (
    AzureKeyVaultFake,
    GcpSecretManagerFake,
    StaticTokenCredential,
    gcp_service_account,
    self_signed_tls,
    serving,
)

pytest.importorskip("google.auth.transport.requests", reason="install meridian-orchestrator[gcp]")
pytest.importorskip("azure.core", reason="install meridian-orchestrator[azure]")

pytestmark = [pytest.mark.contract, pytest.mark.timeout(60)]


# ---- Google Secret Manager ------------------------------------------------------------------


@pytest.fixture
def gcp() -> Iterator[tuple[GcpSecretManagerFake, GcpSecretManagerResolver]]:
    fake = GcpSecretManagerFake()
    with serving(fake) as port:
        base = f"http://127.0.0.1:{port}"
        credentials = gcp_service_account(fake, f"{base}/token")
        config = GcpSmConfig(base_url=base, credentials=credentials, timeout_s=5.0)
        yield fake, GcpSecretManagerResolver(config)


def test_gcp_versions_latest_and_rotation(
    gcp: tuple[GcpSecretManagerFake, GcpSecretManagerResolver],
) -> None:
    fake, resolver = gcp
    fake.add("proj", "db", b"gcp-secret-v1\n")  # payload bytes are kept exactly
    assert resolver.resolve("projects/proj/secrets/db/versions/1") == "gcp-secret-v1\n"
    assert resolver.resolve("projects/proj/secrets/db") == "gcp-secret-v1\n"  # latest
    fake.add("proj", "db", b"gcp-secret-v2")
    assert resolver.resolve("projects/proj/secrets/db/versions/latest") == "gcp-secret-v2"
    assert fake.accessed[-1] == "projects/proj/secrets/db/versions/latest"
    assert len(fake.tokens) == 1  # google-auth reuses its token; values are fetched each time


def test_gcp_json_key(gcp: tuple[GcpSecretManagerFake, GcpSecretManagerResolver]) -> None:
    fake, resolver = gcp
    fake.add("proj", "cfg", b'{"password": "gcp-json-pw"}')
    assert resolver.resolve("projects/proj/secrets/cfg/versions/1#password") == "gcp-json-pw"


def test_gcp_errors(gcp: tuple[GcpSecretManagerFake, GcpSecretManagerResolver]) -> None:
    fake, resolver = gcp
    fake.add("proj", "locked", b"x")
    fake.denied.add(("proj", "locked"))
    with pytest.raises(SecretNotFound, match=r"HTTP 404: Secret .* not found"):
        resolver.resolve("projects/proj/secrets/nope/versions/1")
    with pytest.raises(SecretUnavailable, match="HTTP 403: Permission 'secretmanager"):
        resolver.resolve("projects/proj/secrets/locked/versions/latest")
    with pytest.raises(SecretNotFound, match="must look like"):
        resolver.resolve("secrets/s")


def test_gcp_bad_credentials_and_unreachable_are_infrastructure(
    gcp: tuple[GcpSecretManagerFake, GcpSecretManagerResolver],
) -> None:
    fake, _ = gcp
    fake.add("proj", "db", b"v")
    impostor = gcp_service_account(GcpSecretManagerFake(), fake.token_uri)  # a key it doesn't know
    with pytest.raises(SecretUnavailable, match="Google credentials"):
        GcpSecretManagerResolver(
            GcpSmConfig(base_url=fake.token_uri.removesuffix("/token"), credentials=impostor)
        ).resolve("projects/proj/secrets/db")
    with serving(GcpSecretManagerFake()) as port:
        dead = f"http://127.0.0.1:{port}"
    with pytest.raises(SecretUnavailable, match="unreachable"):
        GcpSecretManagerResolver(
            GcpSmConfig(base_url=dead, credentials=_fresh_token_credentials(), timeout_s=2.0)
        ).resolve("projects/proj/secrets/db")


def _fresh_token_credentials() -> object:
    from google.oauth2.credentials import Credentials

    return Credentials(token="static-token")


# ---- Azure Key Vault ------------------------------------------------------------------------


@pytest.fixture
def azure(
    tmp_path: Path,
) -> Iterator[tuple[AzureKeyVaultFake, AzureKeyVaultResolver, StaticTokenCredential, str]]:
    fake = AzureKeyVaultFake()
    tls, ca_bundle = self_signed_tls(tmp_path)
    credential = StaticTokenCredential(fake.token)
    with serving(fake, tls) as port:
        vault_url = f"https://localhost:{port}/{{vault}}"
        config = AzureKvConfig(
            vault_url=vault_url, credential=credential, ca_bundle=str(ca_bundle), timeout_s=5.0
        )
        yield fake, AzureKeyVaultResolver(config), credential, str(ca_bundle)


def test_azure_latest_version_and_token_scope(
    azure: tuple[AzureKeyVaultFake, AzureKeyVaultResolver, StaticTokenCredential, str],
) -> None:
    fake, resolver, credential, _ = azure
    fake.add("prod-vault", "db-password", "kv-secret-v1")
    assert resolver.resolve("prod-vault/db-password") == "kv-secret-v1"
    fake.add("prod-vault", "db-password", "kv-secret-v2")
    assert resolver.resolve("prod-vault/db-password") == "kv-secret-v2"  # rotation
    assert resolver.resolve("prod-vault/db-password/v1") == "kv-secret-v1"
    assert fake.requests[-1] == "/prod-vault/secrets/db-password/v1"
    assert credential.scopes and set(credential.scopes) == {("https://vault.azure.net/.default",)}


def test_azure_json_key_and_errors(
    azure: tuple[AzureKeyVaultFake, AzureKeyVaultResolver, StaticTokenCredential, str],
) -> None:
    fake, resolver, _, _ = azure
    fake.add("prod-vault", "cfg", '{"user": "svc", "password": "kv-json-pw"}')
    fake.add("prod-vault", "off", "x")
    fake.disabled.add(("prod-vault", "off"))
    assert resolver.resolve("prod-vault/cfg#password") == "kv-json-pw"
    with pytest.raises(SecretNotFound, match="HTTP 404: SecretNotFound"):
        resolver.resolve("prod-vault/missing")
    with pytest.raises(SecretNotFound, match="SecretDisabled"):
        resolver.resolve("prod-vault/off")
    for bad in ("prod-vault", "x/name", "prod-vault/bad_name", "a/b/c/d"):
        with pytest.raises(SecretNotFound):
            resolver.resolve(bad)


def test_azure_wrong_token_and_untrusted_tls_are_infrastructure(
    azure: tuple[AzureKeyVaultFake, AzureKeyVaultResolver, StaticTokenCredential, str],
) -> None:
    fake, resolver, _, ca_bundle = azure
    fake.add("prod-vault", "db", "v")
    vault_url = _vault_url(resolver)
    wrong = AzureKvConfig(
        vault_url=vault_url, credential=StaticTokenCredential("other"), ca_bundle=ca_bundle
    )
    with pytest.raises(SecretUnavailable, match="HTTP 401"):
        AzureKeyVaultResolver(wrong).resolve("prod-vault/db")
    untrusted = AzureKvConfig(vault_url=vault_url, credential=StaticTokenCredential(fake.token))
    with pytest.raises(SecretUnavailable, match="Key Vault unreachable"):
        AzureKeyVaultResolver(untrusted).resolve("prod-vault/db")  # system CAs: TLS fails


def test_azure_refuses_plain_http_for_bearer_tokens() -> None:
    config = AzureKvConfig(
        vault_url="http://127.0.0.1:9/{vault}", credential=StaticTokenCredential("t")
    )
    with pytest.raises(SecretUnavailable, match=r"(?i)bearer token"):
        AzureKeyVaultResolver(config).resolve("prod-vault/db")


def _vault_url(resolver: AzureKeyVaultResolver) -> str:
    return resolver._config.vault_url


def test_gcp_and_azure_through_the_store(
    gcp: tuple[GcpSecretManagerFake, GcpSecretManagerResolver],
    azure: tuple[AzureKeyVaultFake, AzureKeyVaultResolver, StaticTokenCredential, str],
) -> None:
    gfake, gres = gcp
    afake, ares, credential, ca_bundle = azure
    gfake.add("proj", "api", b"gcp-store-value")
    afake.add("prod-vault", "api", "azure-store-value")
    store = SecretStore.from_config(
        {
            "gcp-sm": {"base_url": gres._config.base_url, "credentials": gres._config.credentials},
            "azure-kv": {
                "vault_url": _vault_url(ares),
                "credential": credential,
                "ca_bundle": ca_bundle,
            },
        }
    )
    resolved = asyncio.run(
        store.resolve(
            {
                "G": "gcp-sm:projects/proj/secrets/api/versions/latest",
                "A": "azure-kv:prod-vault/api",
                "A2": "azure-kv:prod-vault/api",
            }
        )
    )
    assert dict(resolved.env) == {
        "G": "gcp-store-value",
        "A": "azure-store-value",
        "A2": "azure-store-value",
    }
    assert len(afake.requests) == 1  # one reference, resolved once for both env vars
