"""The meta-scheduler's matching rules, exhaustively and as properties."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grid_dev.matching import (
    OPERATORS,
    Affinity,
    JobNeeds,
    Label,
    ProviderOffer,
    affinity_holds,
    choose_provider,
    claim_overdue,
    compare,
    decode_operator,
    encode_operator,
    fits,
    mismatches,
    tasks_that_fit,
)
from grid_protocol.pricing import credits_per_minute

CREDIT = 10**18
WORKED_PRICES = {
    "gpu_price": 8_500_000_000_000_000_000,
    "cpu_price": 950_000_000_000_000_000,
    "mem_price": 80_000_000_000_000,
}


def offer(
    address: str = "0x" + "a" * 40,
    *,
    nodes: int = 1,
    cpus: int = 16,
    mem: int = 64_000,
    gpus: int = 2,
    labels: tuple[tuple[str, str], ...] = (),
    prices: dict[str, int] | None = None,
    schedulable: bool = True,
) -> ProviderOffer:
    return ProviderOffer(
        address=address,
        cpus_per_node=(cpus,) * nodes,
        mem_per_node=(mem,) * nodes,
        gpus_per_node=(gpus,) * nodes,
        labels=tuple(Label(k, v) for k, v in labels),
        schedulable=schedulable,
        **(prices or {}),
    )


def needs(
    ntasks: int = 1,
    cpus_per_task: int = 1,
    mem_per_cpu: int = 1024,
    gpus: int = 0,
    *,
    uses: tuple[tuple[str, str], ...] = (),
    affinity: tuple[tuple[str, str, str], ...] = (),
    max_cost: int = 200 * CREDIT,
) -> JobNeeds:
    return JobNeeds(
        ntasks=ntasks,
        cpus_per_task=cpus_per_task,
        mem_per_cpu=mem_per_cpu,
        gpus=gpus,
        uses=tuple(Label(k, v) for k, v in uses),
        affinity=tuple(Affinity(k, v, op) for k, op, v in affinity),
        max_cost=max_cost,
    )


# -- operators ---------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPERATORS)
def test_operators_round_trip_through_their_two_bytes(op: str) -> None:
    raw = encode_operator(op)
    assert len(raw) == 2
    assert decode_operator(raw) == op
    assert decode_operator("0x" + raw.hex()) == op


def test_less_than_is_stored_with_a_nul_second_byte() -> None:
    assert encode_operator("<") == b"<\0"
    assert encode_operator(">") == b">\0"


@pytest.mark.parametrize("raw", [b"\0\0", b"=<", b"~=", b"\xff\xfe", "0xzz", "0x3d"])
def test_unknown_operators_decode_to_none(raw: bytes | str) -> None:
    assert decode_operator(raw) is None


def test_encoding_an_unknown_operator_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="unknown affinity operator '=<'"):
        encode_operator("=<")


# -- comparisons -------------------------------------------------------------------------------

NUMERIC_CASES = [("10", "9"), ("9", "10"), ("1.5", "1.50"), ("-2", "1e1"), ("0", "0"), (" 3 ", "3")]


@pytest.mark.parametrize(("left", "right"), NUMERIC_CASES)
@pytest.mark.parametrize("op", OPERATORS)
def test_numbers_compare_as_numbers(left: str, right: str, op: str) -> None:
    a, b = Decimal(left.strip()), Decimal(right.strip())
    expected = {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    assert compare(left, op, right) is expected


def test_ten_is_more_than_nine_although_its_text_sorts_first() -> None:
    assert compare("10", ">", "9")
    assert not compare("10", ">", "9a")  # not both numbers: text order, "1" < "9"


@pytest.mark.parametrize(("left", "right"), [("a100", "a20"), ("zen", "ampere"), ("NaN", "1"), ("inf", "5")])
@pytest.mark.parametrize("op", OPERATORS)
def test_other_values_compare_as_text(left: str, right: str, op: str) -> None:
    expected = {
        "==": left == right,
        "!=": left != right,
        "<": left < right,
        "<=": left <= right,
        ">": left > right,
        ">=": left >= right,
    }[op]
    assert compare(left, op, right) is expected


@given(st.text(max_size=8), st.text(max_size=8))
def test_comparisons_are_consistent(left: str, right: str) -> None:
    """Exactly one of <, ==, > holds; != is the negation of ==; <= is < or ==."""
    lt, eq, gt = compare(left, "<", right), compare(left, "==", right), compare(left, ">", right)
    assert [lt, eq, gt].count(True) == 1
    assert compare(left, "!=", right) is not eq
    assert compare(left, "<=", right) is (lt or eq)
    assert compare(left, ">=", right) is (gt or eq)
    assert compare(right, ">", left) is lt


@given(st.decimals(allow_nan=False, allow_infinity=False), st.decimals(allow_nan=False, allow_infinity=False))
def test_decimal_texts_follow_numeric_order(a: Decimal, b: Decimal) -> None:
    assert compare(str(a), "<", str(b)) is (a < b)
    assert compare(str(a), "==", str(b)) is (a == b)


def test_an_unknown_operator_never_holds() -> None:
    assert not compare("1", "~", "1")


# -- affinities --------------------------------------------------------------------------------


def test_affinity_needs_a_label_with_its_key() -> None:
    labels = (Label("arch", "x86_64"), Label("cpu-gen", "4"))
    assert affinity_holds(Affinity("cpu-gen", "3", ">"), labels)
    assert not affinity_holds(Affinity("cpu-gen", "4", ">"), labels)
    assert affinity_holds(Affinity("arch", "arm64", "!="), labels)
    assert not affinity_holds(Affinity("region", "eu", "!="), labels)  # no such label at all


def test_affinity_holds_when_any_label_of_that_key_satisfies_it() -> None:
    labels = (Label("zone", "a"), Label("zone", "b"))
    assert affinity_holds(Affinity("zone", "b", "=="), labels)
    assert not affinity_holds(Affinity("zone", "c", "=="), labels)


# -- hardware ----------------------------------------------------------------------------------


def brute_force_tasks(cpus: tuple[int, ...], mems: tuple[int, ...], cpt: int, mpc: int) -> int:
    """Place tasks one by one on the first node with room: the reference for tasks_that_fit."""
    free = [[c, m] for c, m in zip(cpus, mems, strict=True)]
    placed = 0
    while True:
        for node in free:
            if node[0] >= cpt and node[1] >= cpt * mpc:
                node[0] -= cpt
                node[1] -= cpt * mpc
                placed += 1
                break
        else:
            return placed


@pytest.mark.parametrize(
    ("cpus", "mems", "cpt", "mpc"),
    [
        (cpus, mems, cpt, mpc)
        for cpus in [(4,), (3, 5), (8, 8, 1)]
        for mems in [(4000,) * 3, (1000, 8000, 500)]
        for cpt in (1, 2, 3, 5)
        for mpc in (100, 1000, 3000)
    ],
)
def test_tasks_that_fit_agrees_with_placing_them_one_by_one(
    cpus: tuple[int, ...], mems: tuple[int, ...], cpt: int, mpc: int
) -> None:
    mems = mems[: len(cpus)]
    provider = ProviderOffer("0x" + "1" * 40, cpus, mems, (0,) * len(cpus))
    assert tasks_that_fit(needs(1, cpt, mpc), provider) == brute_force_tasks(cpus, mems, cpt, mpc)


@given(
    st.lists(
        st.tuples(st.integers(0, 64), st.integers(0, 100_000), st.integers(0, 8)), min_size=1, max_size=4
    ),
    st.integers(1, 12),
    st.integers(1, 8),
    st.integers(1, 9000),
    st.integers(0, 10),
)
def test_a_job_fits_exactly_when_its_tasks_and_gpus_can_be_placed(
    nodes: list[tuple[int, int, int]], ntasks: int, cpt: int, mpc: int, gpus: int
) -> None:
    cpus, mems, node_gpus = (tuple(column) for column in zip(*nodes, strict=True))
    provider = ProviderOffer("0x" + "2" * 40, cpus, mems, node_gpus)
    job = needs(ntasks, cpt, mpc, gpus)
    placeable = brute_force_tasks(cpus, mems, cpt, mpc) >= ntasks and gpus <= sum(node_gpus)
    assert fits(job, provider) is placeable
    if not placeable:
        assert mismatches(job, provider)


def test_hardware_mismatches_name_what_is_missing() -> None:
    small = offer(cpus=4, mem=8000, gpus=1)
    assert mismatches(needs(2, 4, 1000), small) == ["needs 8 CPUs, has 4"]
    assert mismatches(needs(1, 2, 8000), small) == ["needs 16000 MB of memory, has 8000"]
    assert mismatches(needs(1, 1, 1000, gpus=2), small) == ["needs 2 GPUs, has 1"]


def test_a_task_never_spans_two_nodes() -> None:
    two_small_nodes = offer(nodes=2, cpus=4, mem=16_000, gpus=0)
    assert fits(needs(2, 4, 1000), two_small_nodes)  # one task per node
    reasons = mismatches(needs(1, 8, 1000), two_small_nodes)  # 8 CPUs in total, but 4 per node
    assert reasons == ["its nodes hold 0 of the 1 tasks (8 CPUs and 8000 MB each)"]


def test_gpus_count_across_the_nodes() -> None:
    assert fits(needs(gpus=4), offer(nodes=2, gpus=2))
    assert not fits(needs(gpus=5), offer(nodes=2, gpus=2))


def test_an_unschedulable_provider_never_fits() -> None:
    assert mismatches(needs(), offer(schedulable=False)) == ["not schedulable (not approved, or banned)"]


def test_a_job_whose_credits_buy_no_minute_does_not_fit() -> None:
    job = needs(1, 2, 1024, 1, max_cost=10 * CREDIT)  # 10.56384 credits per minute on the worked prices
    reasons = mismatches(job, offer(prices=WORKED_PRICES))
    assert reasons == [
        "the locked credits buy less than a minute (10563840000000000000 credit-wei per minute)"
    ]
    assert fits(job, offer())  # free provider: any credits buy time


# -- labels ------------------------------------------------------------------------------------


def test_uses_need_the_exact_label() -> None:
    provider = offer(labels=(("os", "linux"), ("arch", "x86_64")))
    assert fits(needs(uses=(("os", "linux"),)), provider)
    assert fits(needs(uses=(("os", "linux"), ("arch", "x86_64"))), provider)
    assert mismatches(needs(uses=(("os", "Linux"),)), provider) == ["lacks the label os=Linux"]
    assert mismatches(needs(uses=(("gpu", "a100"),)), provider) == ["lacks the label gpu=a100"]


def test_every_affinity_must_hold() -> None:
    provider = offer(labels=(("cpu-gen", "4"), ("region", "eu-west")))
    assert fits(needs(affinity=(("cpu-gen", ">=", "4"), ("region", "==", "eu-west"))), provider)
    assert mismatches(needs(affinity=(("cpu-gen", ">", "4"), ("region", "==", "eu-west"))), provider) == [
        "affinity cpu-gen > 4 does not hold"
    ]
    assert mismatches(needs(affinity=(("cpu-gen", "~", "4"),)), provider) == [
        "affinity on cpu-gen has an unknown operator"
    ]


# -- choice ------------------------------------------------------------------------------------


def test_the_cheapest_fitting_provider_wins() -> None:
    cheap_small = offer("0x" + "1" * 40, cpus=2, prices={"cpu_price": 1})
    dear = offer("0x" + "2" * 40, prices={"cpu_price": 3})
    cheap = offer("0x" + "3" * 40, prices={"cpu_price": 2})
    assert choose_provider(needs(1, 1, 100), [cheap_small, dear, cheap]) == cheap_small
    assert choose_provider(needs(1, 4, 100), [cheap_small, dear, cheap]) == cheap  # too big for the first


def test_no_fitting_provider_gives_none() -> None:
    assert choose_provider(needs(gpus=9), [offer(), offer("0x" + "b" * 40)]) is None
    assert choose_provider(needs(), []) is None


def test_a_provider_that_refused_is_avoided_while_another_fits() -> None:
    a, b = offer("0x" + "a" * 40), offer("0x" + "B" * 40, prices={"cpu_price": 5})
    assert choose_provider(needs(), [a, b]) == a
    assert choose_provider(needs(), [a, b], refused_by={a.address.upper().replace("0X", "0x"): 7}) == b
    assert choose_provider(needs(), [a], refused_by={a.address: 7}) == a  # nobody else: it gets it again
    # both refused: the one that refused longest ago comes first
    assert choose_provider(needs(), [a, b], refused_by={a.address: 9, b.address: 3}) == b


@given(st.permutations(range(5)), st.sets(st.integers(0, 4)))
def test_the_choice_does_not_depend_on_the_order_of_providers(order: list[int], refusers: set[int]) -> None:
    providers = [offer(f"0x{i:040x}", cpus=1 + i, prices={"cpu_price": (i * 7) % 3}) for i in range(5)]
    refused = {providers[i].address: i for i in refusers}
    job = needs(1, 2, 100)
    expected = choose_provider(job, providers, refused)
    assert choose_provider(job, [providers[i] for i in order], refused) == expected
    fitting = [p for p in providers if fits(job, p)]
    if fitting:
        assert expected in fitting
        if any(p.address not in refused for p in fitting):
            assert expected is not None and expected.address not in refused


def test_credits_per_minute_of_the_worked_example() -> None:
    """PROTOCOL.md section 3: 10.56384 credits per minute."""
    job = needs(1, 2, 1024, 1)
    assert credits_per_minute(job, offer(prices=WORKED_PRICES).prices) == 10_563_840_000_000_000_000


# -- claim timeout -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("waited", "overdue"), [(0, False), (599, False), (600, False), (601, True), (10_000, True)]
)
def test_a_claim_is_overdue_only_past_the_timeout(waited: int, overdue: bool) -> None:
    assert claim_overdue(1_000, 1_000 + waited, 10) is overdue


def test_every_pair_of_operator_and_order_is_covered() -> None:
    """The table of operators against the three orders of two numbers."""
    table = {
        "==": (False, True, False),
        "!=": (True, False, True),
        "<": (True, False, False),
        "<=": (True, True, False),
        ">": (False, False, True),
        ">=": (False, True, True),
    }
    for op, (below, equal, above) in table.items():
        for (left, right), expected in zip(
            itertools.product(["1"], ["2", "1", "0"]), (below, equal, above), strict=True
        ):
            assert compare(left, op, right) is expected, (left, op, right)
