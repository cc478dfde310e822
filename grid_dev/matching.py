"""Which provider gets a pending job: pure decisions of the meta-scheduler, with no I/O.

A provider fits a job when the job's tasks can be placed on its nodes (each task needs
`cpusPerTask` CPUs and `cpusPerTask * memPerCpu` MB of one node), its GPUs cover the job's,
every label the job `uses` is one of the provider's labels, every `affinity` holds, and the
locked credits buy at least one minute at the provider's prices. Among the fitting providers the
cheapest wins; a provider that refused the job lately is taken only when nothing else fits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from grid_protocol.pricing import ProviderPrices, credits_per_minute

#: The affinity operators of the protocol, as their two bytes decode ("<" is "<\0" on chain).
OPERATORS = ("==", "!=", "<", "<=", ">", ">=")


@dataclass(frozen=True)
class Label:
    key: str
    value: str


@dataclass(frozen=True)
class Affinity:
    """A constraint on a provider label: the provider's value `op` this value."""

    key: str
    value: str
    op: str


@dataclass(frozen=True)
class JobNeeds:
    """What a job asks for (from its on-chain JobDefinition) and the credits it locked."""

    ntasks: int
    cpus_per_task: int
    mem_per_cpu: int
    gpus: int
    uses: tuple[Label, ...] = ()
    affinity: tuple[Affinity, ...] = ()
    max_cost: int = 0


@dataclass(frozen=True)
class ProviderOffer:
    """An approved provider's hardware (per node), prices (credit-wei per unit-minute) and labels."""

    address: str
    cpus_per_node: tuple[int, ...]
    mem_per_node: tuple[int, ...]
    gpus_per_node: tuple[int, ...]
    gpu_price: int = 0
    cpu_price: int = 0
    mem_price: int = 0
    labels: tuple[Label, ...] = ()
    schedulable: bool = True

    @property
    def prices(self) -> ProviderPrices:
        """The prices as `grid_protocol.pricing` reads them."""
        return ProviderPrices(self.gpu_price, self.cpu_price, self.mem_price)


def decode_operator(raw: bytes | str) -> str | None:
    """The operator of an affinity's `bytes2 op` (bytes, or 0x-hex as events carry it); None if unknown."""
    if isinstance(raw, str):
        text = raw[2:] if raw.startswith(("0x", "0X")) else raw
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            return None
    try:
        op = raw.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError:
        return None
    return op if op in OPERATORS else None


def encode_operator(op: str) -> bytes:
    """The two bytes of an operator as stored on chain."""
    if op not in OPERATORS:
        raise ValueError(f"unknown affinity operator {op!r}: use one of {', '.join(OPERATORS)}")
    return op.encode("ascii").ljust(2, b"\0")


def _number(text: str) -> Decimal | None:
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() else None


def compare(left: str, op: str, right: str) -> bool:
    """`left op right`: numerically when both sides are finite numbers, else as strings."""
    a: Decimal | str
    b: Decimal | str
    na, nb = _number(left), _number(right)
    if na is not None and nb is not None:
        a, b = na, nb
    else:
        a, b = left, right
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if op == "<":
        return a < b  # type: ignore[operator]
    if op == "<=":
        return a <= b  # type: ignore[operator]
    if op == ">":
        return a > b  # type: ignore[operator]
    if op == ">=":
        return a >= b  # type: ignore[operator]
    return False


def affinity_holds(affinity: Affinity, labels: Iterable[Label]) -> bool:
    """Whether one of the provider's labels with the affinity's key satisfies it.

    A provider without a label of that key satisfies no affinity on it, "!=" included: an
    affinity names a property the provider must declare.
    """
    return any(
        label.key == affinity.key and compare(label.value, affinity.op, affinity.value) for label in labels
    )


def tasks_that_fit(job: JobNeeds, provider: ProviderOffer) -> int:
    """How many of the job's tasks the provider's nodes hold (a task never spans two nodes)."""
    task_mem = job.cpus_per_task * job.mem_per_cpu
    total = 0
    for cpus, mem in zip(provider.cpus_per_node, provider.mem_per_node, strict=False):
        if job.cpus_per_task <= 0 or task_mem <= 0:
            return 0
        total += min(cpus // job.cpus_per_task, mem // task_mem)
    return total


def mismatches(job: JobNeeds, provider: ProviderOffer) -> list[str]:
    """Why the provider cannot take the job; empty when it fits."""
    reasons: list[str] = []
    if not provider.schedulable:
        reasons.append("not schedulable (not approved, or banned)")
    if job.ntasks <= 0 or job.cpus_per_task <= 0 or job.mem_per_cpu <= 0:
        reasons.append("the job definition asks for no task, CPU or memory")
        return reasons
    cpus_needed = job.ntasks * job.cpus_per_task
    mem_needed = cpus_needed * job.mem_per_cpu
    if cpus_needed > sum(provider.cpus_per_node):
        reasons.append(f"needs {cpus_needed} CPUs, has {sum(provider.cpus_per_node)}")
    if mem_needed > sum(provider.mem_per_node):
        reasons.append(f"needs {mem_needed} MB of memory, has {sum(provider.mem_per_node)}")
    if not reasons and tasks_that_fit(job, provider) < job.ntasks:
        reasons.append(
            f"its nodes hold {tasks_that_fit(job, provider)} of the {job.ntasks} tasks "
            f"({job.cpus_per_task} CPUs and {job.cpus_per_task * job.mem_per_cpu} MB each)"
        )
    if job.gpus > sum(provider.gpus_per_node):
        reasons.append(f"needs {job.gpus} GPUs, has {sum(provider.gpus_per_node)}")
    labels = set(provider.labels)
    for use in job.uses:
        if use not in labels:
            reasons.append(f"lacks the label {use.key}={use.value}")
    for affinity in job.affinity:
        if affinity.op not in OPERATORS:
            reasons.append(f"affinity on {affinity.key} has an unknown operator")
        elif not affinity_holds(affinity, provider.labels):
            reasons.append(f"affinity {affinity.key} {affinity.op} {affinity.value} does not hold")
    per_minute = credits_per_minute(job, provider.prices)
    if per_minute > 0 and job.max_cost // per_minute < 1:
        reasons.append(f"the locked credits buy less than a minute ({per_minute} credit-wei per minute)")
    return reasons


def fits(job: JobNeeds, provider: ProviderOffer) -> bool:
    return not mismatches(job, provider)


def choose_provider(
    job: JobNeeds,
    providers: Sequence[ProviderOffer],
    refused_by: Mapping[str, int] | None = None,
) -> ProviderOffer | None:
    """The provider to give the job to, or None when none fits.

    `refused_by` maps the addresses (any case) of providers that refused this job lately to when
    they did (any increasing measure). They come last, the most recent refusal the very last;
    otherwise the cheapest provider wins, then the lowest address, so the choice is deterministic.
    """
    refusals = {address.lower(): when for address, when in (refused_by or {}).items()}
    candidates = [p for p in providers if fits(job, p)]
    if not candidates:
        return None

    def rank(provider: ProviderOffer) -> tuple[bool, int, int, str]:
        refused_at = refusals.get(provider.address.lower())
        return (
            refused_at is not None,
            refused_at if refused_at is not None else 0,
            credits_per_minute(job, provider.prices),
            provider.address.lower(),
        )

    return min(candidates, key=rank)


def claim_overdue(state_changed_at: int, now: int, claim_timeout_minutes: int) -> bool:
    """Whether a META_SCHEDULED job, in that status since `state_changed_at` (block timestamps in
    seconds), has waited for its provider's claim longer than `claimJobTimeout` minutes."""
    return now - state_changed_at > claim_timeout_minutes * 60
