import pytest

from meshrun.fleet.rollout import FailureBudget, batch_sizes


@pytest.mark.parametrize(
    ("spec", "hosts", "expected"),
    [
        ("1,25%,100%", 8, [1, 2, 5]),
        ("1,25%,100%", 1, [1]),
        ("2", 5, [2, 2, 1]),
        ("50%", 3, [1, 1, 1]),  # 1.5 rounds down, and repeats
        ("100%", 4, [4]),
        ("1,1,100%", 2, [1, 1]),
        ("10", 3, [3]),
        ("1%", 3, [1, 1, 1]),  # at least one host per batch
    ],
)
def test_batch_sizes(spec: str, hosts: int, expected: list[int]) -> None:
    assert batch_sizes(spec, hosts) == expected
    assert sum(batch_sizes(spec, hosts)) == hosts


@pytest.mark.parametrize("spec", ["x", "0", "-1", "0%", "120%", "1,,2", "", "2.5"])
def test_bad_batch_spec_names_the_option(spec: str) -> None:
    with pytest.raises(ValueError, match="--batch"):
        batch_sizes(spec, 4)


def test_failure_budget_count_and_percent() -> None:
    zero = FailureBudget.parse("0")
    assert not zero.exceeded(0, 10)
    assert zero.exceeded(1, 10)
    quarter = FailureBudget.parse("25%")
    assert not quarter.exceeded(2, 10)
    assert quarter.exceeded(3, 10)


@pytest.mark.parametrize("spec", ["many", "-1", "101%"])
def test_bad_failure_budget(spec: str) -> None:
    with pytest.raises(ValueError, match="--max-fail"):
        FailureBudget.parse(spec)
