"""Registration: the provider's offer (hardware, prices, labels) kept in step with ProviderManager.

The offer wanted is built from Slurm's partition and the configuration (`desired_offer`, pure); it is
sent only when neither the approved nor the waiting record already holds it, after approving the
grid's registration tax when there is one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time

import structlog

from supervisor.chain.contracts import ProtocolContracts, ProviderRecord
from supervisor.chain.sender import TransactionSender
from supervisor.config import RegistrationSettings
from supervisor.slurm.models import PartitionHardware
from supervisor.store import OutboxState, Store

log = structlog.get_logger("supervisor")


def desired_offer(hardware: PartitionHardware, registration: RegistrationSettings) -> ProviderRecord:
    """The record the provider should have on chain for this partition and these settings."""
    gpu, cpu, mem = registration.prices.as_wei()
    return ProviderRecord(
        nodes=hardware.node_count,
        gpus_per_node=tuple(hardware.gpus_per_node),
        cpus_per_node=tuple(hardware.cpus_per_node),
        mem_per_node=tuple(hardware.memory_mb_per_node),
        gpu_price_per_min=gpu,
        cpu_price_per_min=cpu,
        mem_price_per_min=mem,
        labels=tuple(sorted(registration.labels.items())),
    )


@dataclasses.dataclass
class Registrar:
    """Registers the provider's offer; `register` is retried by the caller until it returns True."""

    provider: str
    contracts: ProtocolContracts
    sender: TransactionSender
    store: Store

    async def register(self, hardware: PartitionHardware, registration: RegistrationSettings) -> bool:
        """Put the offer on chain; True when it is registered (sent or approved), False when it waits
        for approval unchanged. Raises when it could not be sent (the caller retries)."""
        desired = desired_offer(hardware, registration)
        approved = await self.contracts.provider_record(self.provider)
        waiting = await self.contracts.provider_record(self.provider, waiting=True)
        if approved.address and approved.same_offer(desired):
            log.info("registration unchanged", nodes=hardware.node_count, approved=True)
            return True
        if waiting.address and waiting.same_offer(desired):
            log.info("registration unchanged, waiting for approval", nodes=hardware.node_count)
            return False
        await self._pay_registration_tax()
        outcome = await self.sender.wait(self._registration_action(desired))
        if not outcome.delivered:
            raise RuntimeError(f"registration failed: {outcome.error}")
        log.info(
            "registered with the grid",
            nodes=hardware.node_count,
            cpus_per_node=list(hardware.cpus_per_node),
            gpus_per_node=list(hardware.gpus_per_node),
            mem_per_node=list(hardware.memory_mb_per_node),
            tx_hash=outcome.tx_hash,
        )
        return True

    def _registration_action(self, desired: ProviderRecord) -> int:
        """The outbox action registering `desired`: one row per attempt at one offer, however often a
        failing registration is retried (a failed row is queued again rather than a new one added)."""
        prefix = "register:" + hashlib.sha256(repr(desired.offer()).encode()).hexdigest()[:32] + ":"
        previous = self.store.latest_action("register", prefix)
        if previous is not None and previous.state in (OutboxState.QUEUED, OutboxState.SENT):
            return previous.id
        if previous is not None and previous.state == OutboxState.FAILED and not previous.already_done:
            self.store.retry_failed(previous.id, f"registering again after: {previous.error}")
            self.sender.wake()
            return previous.id
        call = dataclasses.replace(self.contracts.register(desired), dedup_key=f"{prefix}{time.time_ns()}")
        return self.sender.submit_call(call)

    async def _pay_registration_tax(self) -> None:
        """Approve ProviderManager for the grid's registration tax, which `register` then takes."""
        tax, token = await self.contracts.registration_tax()
        if tax == 0:
            return
        if token is None:
            raise RuntimeError(
                f"the grid charges a registration tax of {tax} credit-wei and does not say in which token"
            )
        spender = self.contracts.provider_manager.address
        if await self.contracts.allowance(token, self.provider, spender) >= tax:
            return
        outcome = await self.sender.wait(self.sender.submit_call(self.contracts.approve(token, spender, tax)))
        if not outcome.delivered:
            raise RuntimeError(f"approving the registration tax failed: {outcome.error}")
        log.info("registration tax approved", tax_wei=tax, token=token, tx_hash=outcome.tx_hash)
