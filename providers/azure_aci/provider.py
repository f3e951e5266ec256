"""The ``azure-aci`` provider: one Azure Container Instances container group per attempt.

Each attempt becomes a container group (restart policy ``Never``) named after the attempt id,
with one container that runs ``meridian-step --spec-env MERIDIAN_STEP_SPEC`` (code baked into
the image) or the step's own ``command``. The provider polls ARM for the container's state,
reads the step's ``::meridian-outcome::`` line back from the container log, and deletes the
group afterwards. Why an attempt ended (cancelled, timed out, its outcome) is also written to the
attempt's work dir *before* the group is deleted, so ``wait``/``recover`` after an agent restart
still know. Uses the async management client; the SDK is imported lazily (extra ``[azure]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from providers.azure_aci.client import GroupsClient, load_sdk
from providers.azure_aci.config import (
    CONTAINER_NAME,
    OPTIONS_SCHEMA,
    AciConfig,
    build_group,
    check_options,
    group_name,
)
from providers.azure_aci.state import (
    Attempt,
    azure_message,
    group_ended,
    infrastructure,
    noted,
    outcome_of,
)
from providers.base import (
    Capabilities,
    ExecutionSpec,
    Handle,
    LogRecord,
    Outcome,
    Provider,
    ProviderError,
)
from providers.shared.logfollow import LogSnapshot, follow_snapshots

__all__ = ["AciConfig", "AciProvider"]

log = logging.getLogger(__name__)


class AciProvider(Provider):
    """Runs each attempt as an Azure Container Instances container group. See ``AciConfig``."""

    type: ClassVar[str] = "azure-aci"
    capabilities: ClassVar[Capabilities] = Capabilities(
        cancel=True, recover=True, streaming_logs=True, python_steps=True
    )
    options_schema: ClassVar[Mapping[str, Any]] = OPTIONS_SCHEMA

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.settings = AciConfig.from_mapping(self.config)
        self._groups = GroupsClient(self.settings)

    def validate_options(self, options: Mapping[str, Any]) -> None:
        super().validate_options(options)
        check_options(options)

    # -- the SDK client --------------------------------------------------------------------

    async def _groups_client(self) -> Any:
        return await self._groups.get()

    async def close(self) -> None:
        # Container groups keep running: a restarted agent re-attaches to them.
        await self._groups.close()

    # -- verbs -----------------------------------------------------------------------------

    async def submit(self, spec: ExecutionSpec) -> Handle:
        self.validate_options(spec.options)
        client, sdk = await self._groups_client(), load_sdk()
        name, rg = group_name(spec.attempt_id), self.settings.resource_group
        started_at_ms = int(time.time() * 1000)
        try:
            poller = await client.container_groups.begin_create_or_update(
                rg,
                name,
                build_group(spec, self.settings, sdk.models),
                polling_interval=self.settings.poll_interval_s,
            )
            created = await poller.result()
        except sdk.exceptions.AzureError as exc:
            # A group whose provisioning failed still exists: do not leave it behind.
            with contextlib.suppress(sdk.exceptions.AzureError):
                await client.container_groups.begin_delete(rg, name)
            raise ProviderError(
                f"Azure could not create container group {name!r} in resource group {rg!r}: "
                f"{azure_message(exc)}"
            ) from exc
        spec.work_dir.mkdir(parents=True, exist_ok=True)
        timeout = spec.timeout_s if spec.timeout_s and spec.timeout_s > 0 else None
        data = {
            "group": name,
            "resource_group": rg,
            "work_dir": str(spec.work_dir.resolve()),
            "timeout_s": timeout,
            "started_at_ms": started_at_ms,
            "python_step": "command" not in spec.options,
        }
        resource_id = created.id or (
            f"/subscriptions/{self.settings.subscription_id}/resourceGroups/{rg}"
            f"/providers/Microsoft.ContainerInstance/containerGroups/{name}"
        )
        return Handle(provider=self.type, resource_id=resource_id, data=data)

    async def wait(self, handle: Handle) -> Outcome:
        attempt = Attempt.of(handle)
        client, sdk = await self._groups_client(), load_sdk()
        while True:
            known = attempt.recorded()
            if known is not None:
                return known
            try:
                group = await client.container_groups.get(attempt.resource_group, attempt.group)
            except sdk.exceptions.ResourceNotFoundError:
                return attempt.recorded() or infrastructure(
                    f"container group {attempt.group!r} was deleted outside Meridian "
                    "before the step reported an outcome"
                )
            except sdk.exceptions.AzureError as exc:
                return infrastructure(
                    f"cannot read container group {attempt.group!r}: {azure_message(exc)}"
                )
            if group_ended(group):
                return await self._finish(attempt, group)
            if attempt.overdue():
                attempt.mark_ended("timed_out")
                try:
                    await self._delete(attempt)
                except ProviderError as exc:  # say so: the container may still be running
                    return noted(attempt.recorded(), f"; but deleting it failed: {exc}")
                continue
            await asyncio.sleep(self.settings.poll_interval_s)

    async def _finish(self, attempt: Attempt, group: Any) -> Outcome:
        """Read the ended group's outcome, record it locally, then delete the group."""
        client, sdk = await self._groups_client(), load_sdk()
        try:
            logs = await client.containers.list_logs(
                attempt.resource_group, attempt.group, CONTAINER_NAME
            )
            text = logs.content or ""
        except sdk.exceptions.AzureError as exc:
            text = ""
            log.warning("azure-aci: cannot read logs of %s: %s", attempt.group, azure_message(exc))
        outcome = outcome_of(attempt, group, text)
        attempt.record(outcome, text)
        if self.settings.delete_after_completion:
            try:
                await self._delete(attempt)
            except ProviderError as exc:  # the outcome stands; the group only costs a name
                log.warning("azure-aci: %s", exc)
        return outcome

    async def _delete(self, attempt: Attempt) -> None:
        """Delete the group (idempotent); wait for ARM's delete operation up to kill_grace_s."""
        client, sdk = await self._groups_client(), load_sdk()
        try:
            poller = await client.container_groups.begin_delete(
                attempt.resource_group,
                attempt.group,
                polling_interval=self.settings.poll_interval_s,
            )
            await asyncio.wait_for(poller.result(), self.settings.kill_grace_s)
        except sdk.exceptions.ResourceNotFoundError:
            return
        except TimeoutError:
            return  # ARM keeps deleting; the containers already stopped
        except sdk.exceptions.AzureError as exc:
            raise ProviderError(
                f"cannot delete container group {attempt.group!r}: {azure_message(exc)}"
            ) from exc

    async def cancel(self, handle: Handle, grace_s: float) -> None:
        # ACI has no stop signal with a grace period to ask for: deleting the group stops it.
        attempt = Attempt.of(handle)
        client, sdk = await self._groups_client(), load_sdk()
        if attempt.recorded() is None:
            try:
                group = await client.container_groups.get(attempt.resource_group, attempt.group)
            except sdk.exceptions.ResourceNotFoundError:
                return
            except sdk.exceptions.AzureError as exc:
                raise ProviderError(
                    f"cannot read container group {attempt.group!r}: {azure_message(exc)}"
                ) from exc
            if group_ended(group):  # too late to cancel: keep the real outcome
                await self._finish(attempt, group)
                return
            attempt.mark_ended("cancelled")
        await self._delete(attempt)

    async def recover(self, handle: Handle) -> bool:
        attempt = Attempt.of(handle)
        if attempt.recorded() is not None:
            return True
        client, sdk = await self._groups_client(), load_sdk()
        try:
            await client.container_groups.get(attempt.resource_group, attempt.group)
        except sdk.exceptions.ResourceNotFoundError:
            return False
        except sdk.exceptions.AzureError as exc:
            raise ProviderError(
                f"cannot read container group {attempt.group!r}: {azure_message(exc)}"
            ) from exc
        return True

    async def logs(self, handle: Handle) -> AsyncIterator[LogRecord]:
        # ACI's log API returns the container's whole (merged stdout+stderr) log each time.
        attempt = Attempt.of(handle)
        async for line in follow_snapshots(
            lambda: self._log_snapshot(attempt), self.settings.poll_interval_s
        ):
            yield LogRecord("stdout", line.removesuffix("\r"), int(time.time() * 1000))

    async def _log_snapshot(self, attempt: Attempt) -> LogSnapshot:
        """The container log so far; "ended" is decided before reading, so the last is complete."""
        saved = attempt.saved_logs()
        if saved is not None:
            return LogSnapshot(True, saved)
        client, sdk = await self._groups_client(), load_sdk()
        try:
            group = await client.container_groups.get(attempt.resource_group, attempt.group)
            ended = group_ended(group) or attempt.recorded() is not None
            logs = await client.containers.list_logs(
                attempt.resource_group, attempt.group, CONTAINER_NAME
            )
            return LogSnapshot(ended, logs.content or "")
        except sdk.exceptions.ResourceNotFoundError:
            return LogSnapshot(True, attempt.saved_logs() or "")
        except sdk.exceptions.AzureError as exc:
            # Polling again is harmless; wait() reports a lasting ARM failure as the outcome.
            log.warning("azure-aci: cannot read logs of %s: %s", attempt.group, azure_message(exc))
            return LogSnapshot(attempt.recorded() is not None, attempt.saved_logs() or "")
