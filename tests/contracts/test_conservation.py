"""Property: whatever customers, providers and the oracle do, no credit is created or lost.

Hypothesis drives random sequences of protocol calls on a real anvil. After every step, the credits held
by MetaScheduler equal the locked credits of hot jobs plus the grid's cut, every balance change is
accounted for, and every job's status moved only along the table of PROTOCOL.md section 2.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from grid_protocol.jobs import JobStatus as S
from grid_protocol.jobs import is_allowed
from tests.fixtures.contracts import CREDIT, Grid, Reverted

CUSTOMERS = 3
PROVIDERS = 2
ENDS = (S.FINISHED, S.FAILED, S.OUT_OF_CREDITS, S.CANCELLED)


def make_machine(grid: Grid, seen: set[int]) -> type[RuleBasedStateMachine]:
    customers = grid.customers[:CUSTOMERS]
    providers = grid.providers[:PROVIDERS]
    actors = [grid.admin, grid.oracle, *customers, *providers]
    ended: list[S] = []  # shared by all examples, so that running jobs end in each end status in turn
    f = grid.scheduler.functions

    class Conservation(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.snapshot = grid.snapshot()
            self.jobs: list[bytes] = []
            self.statuses: dict[bytes, int] = {}
            self.supply = grid.credit.functions.totalSupply().call()
            self.next_block = grid.w3.eth.block_number + 1

        def teardown(self) -> None:
            grid.revert_to(self.snapshot)

        def _try(self, who: Any, call: Any) -> bool:
            try:
                grid.send(who, call)
            except Reverted:
                return False
            return True

        def _job(self, index: int) -> bytes | None:
            return self.jobs[index % len(self.jobs)] if self.jobs else None

        @initialize()
        def every_customer_has_a_job(self) -> None:
            for customer in range(CUSTOMERS):
                self.request(customer, 200, delegate=customer == 0)

        @rule(customer=st.integers(0, CUSTOMERS - 1), credits=st.integers(90, 400), delegate=st.booleans())
        def request(self, customer: int, credits: int, delegate: bool) -> None:
            who = customers[customer]
            grid.send(who, grid.credit.functions.approve(grid.scheduler.address, 10**9 * CREDIT))
            definition: tuple[object, ...] = (customer % 2, 1024, 1 + customer, 1, "k", 0, [], [])
            try:
                receipt = grid.send(who, f.requestNewJob(definition, credits * CREDIT, b"\0" * 32, delegate))
            except Reverted:
                assert credits < 100
                return
            (event,) = grid.events(grid.scheduler, "NewJobRequestEvent", receipt)
            self.jobs.append(event["args"]["_jobId"])
            self.statuses[event["args"]["_jobId"]] = S.PENDING
            seen.add(S.PENDING)

        @rule(
            job=st.integers(0, 10**6),
            provider=st.integers(0, PROVIDERS - 1),
            minutes=st.integers(0, 40),
            steps=st.integers(1, 4),
        )
        def progress(self, job: int, provider: int, minutes: int, steps: int) -> None:
            """Moves a job up to `steps` steps along its normal life, as the oracle and its provider would.

            Running jobs end in each of the four end statuses in turn (across examples), so every settlement
            path is taken.
            """
            if (job_id := self._job(job)) is None:
                return
            for _ in range(steps):
                record = grid.job(job_id)
                status, assigned = record["status"], record["providerAddr"]
                if status == S.PENDING:
                    done = self._try(grid.oracle, f.metaSchedule(job_id, providers[provider].address))
                elif status == S.META_SCHEDULED:
                    done = self._try(assigned, f.claimNextJob())
                elif status == S.SCHEDULED:
                    done = self._try(assigned, f.providerSetJobStatus(job_id, S.RUNNING, 0, "", 0))
                elif status == S.RUNNING:
                    grid.advance_time(minutes * 60)
                    end = ENDS[len(ended) % len(ENDS)]
                    done = self._try(assigned, f.providerSetJobStatus(job_id, end, minutes, "", 0))
                    if done:
                        ended.append(end)
                else:
                    done = False
                if not done:
                    return

        @rule(
            action=st.sampled_from(
                [
                    "meta_schedule",
                    "claim_job",
                    "claim_cancelling",
                    "claim_top_up",
                    "report",
                    "cancel",
                    "refuse",
                    "timeout",
                    "panic",
                    "top_up",
                    "delegated_top_up",
                    "withdraw",
                ]
            ),
            job=st.integers(0, 10**6),
            actor=st.integers(0, len(actors) - 1),
            provider=st.integers(0, PROVIDERS - 1),
            status=st.sampled_from(list(S)),
            amount=st.integers(0, 300),
        )
        def disturb(self, action: str, job: int, actor: int, provider: int, status: S, amount: int) -> None:
            """Any call by anyone, valid or not: refused ones must leave no trace."""
            job_id = self._job(job)
            who, p = actors[actor], providers[provider]
            if action == "withdraw":
                cut = f.withdrawableCut().call()
                self._try(grid.admin, f.withdrawAdmin(cut * amount // 100))
            elif action.startswith("claim"):
                name = {"claim_job": "claimNextJob", "claim_cancelling": "claimNextCancellingJob"}.get(
                    action, "claimNextTopUpJob"
                )
                self._try(p, getattr(f, name)())
            elif job_id is None:
                return
            elif action == "meta_schedule":
                self._try(grid.oracle, f.metaSchedule(job_id, p.address))
            elif action == "report":
                self._try(p, f.providerSetJobStatus(job_id, status, amount // 5, "", amount - 1))
            elif action == "cancel":
                self._try(who, f.cancelJob(job_id))
            elif action == "refuse":
                self._try(who, f.refuseJob(job_id))
            elif action == "timeout":
                self._try(grid.oracle, f.timeoutJob(job_id))
            elif action == "panic":
                self._try(grid.oracle, f.panicJob(job_id, "lost"))
            elif action == "top_up":
                grid.send(who, grid.credit.functions.approve(grid.scheduler.address, 10**9 * CREDIT))
                self._try(who, f.topUpJob(job_id, amount * CREDIT))
            elif action == "delegated_top_up":
                self._try(who, f.topUpJobDelegate(job_id))

        @rule(minutes=st.integers(1, 90))
        def time_passes(self, minutes: int) -> None:
            grid.advance_time(minutes * 60)

        @invariant()
        def credits_are_conserved(self) -> None:
            head = grid.w3.eth.block_number
            logs = []
            if head >= self.next_block:
                logs = grid.jobs.events.JobTransitionEvent().get_logs(
                    from_block=self.next_block, to_block=head
                )
            self.next_block = head + 1
            for log in logs:
                job_id, current, nxt = log["args"]["_jobId"], log["args"]["_from"], log["args"]["_to"]
                assert self.statuses[job_id] == current, (job_id, self.statuses[job_id], current)
                assert is_allowed(S(current), S(nxt)), (current, nxt)
                self.statuses[job_id] = nxt
                seen.add(nxt)
            locked = 0
            for job_id, status in self.statuses.items():
                job = grid.job(job_id)
                assert job["status"] == status
                if S(status).is_hot:
                    locked += job["maxCost"]
                    assert job["finalCost"] == 0
                else:
                    assert job["finalCost"] <= job["maxCost"]
            held = grid.balance(grid.scheduler.address)
            assert held == locked + f.withdrawableCut().call()
            assert grid.credit.functions.totalSupply().call() == self.supply
            holders = [grid.admin, grid.oracle, *grid.providers, *grid.customers]
            assert sum(grid.balance(a) for a in holders) + held == self.supply

    return Conservation


def test_no_credit_is_created_or_lost(grid: Grid) -> None:
    for provider in grid.providers[:PROVIDERS]:
        grid.register_provider(provider)
    seen: set[int] = set()
    run_state_machine_as_test(
        make_machine(grid, seen),
        settings=settings(
            max_examples=6,
            stateful_step_count=25,
            derandomize=True,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    # The sequences reached every status, so settlement, refunds and recycling were all exercised.
    assert seen == set(S), sorted(S(s).name for s in set(S) - seen)
