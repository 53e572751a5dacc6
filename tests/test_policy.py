"""converters/policy.py: the mixed-precision tier choice, on numbers made here."""

from __future__ import annotations

import itertools

import pytest

from tritpack_gguf.converters.policy import choose_tiers
from tritpack_gguf.errors import TritpackError

ORDER = ["COLD", "WARM", "HOT"]
SIZE = {"a": {"COLD": 15, "WARM": 36, "HOT": 68}, "b": {"COLD": 15, "WARM": 36, "HOT": 68},
        "emb": {"WARM": 36, "HOT": 68}}
ERR = {"a": {"COLD": 10.0, "WARM": 1.0, "HOT": 0.1},     # gains most from WARM
       "b": {"COLD": 3.0, "WARM": 0.5, "HOT": 0.05},
       "emb": {"WARM": 2.0, "HOT": 0.01}}
LOWEST = {"a": "COLD", "b": "COLD", "emb": "WARM"}


def total(choice, fixed=100):
    return fixed + sum(SIZE[n][t] for n, t in choice.items())


@pytest.mark.parametrize("budget", [166, 187, 200, 208, 240, 300])
def test_the_choice_meets_the_budget_and_is_never_worse_than_any_other_greedy_step(budget):
    choice = choose_tiers(LOWEST, ERR, SIZE, 100, budget, ORDER)
    assert total(choice) <= budget
    assert all(ORDER.index(choice[n]) >= ORDER.index(LOWEST[n]) for n in choice)
    # no single further upgrade fits the budget and lowers the error
    for n, t in choice.items():
        if t != "HOT":
            nxt = ORDER[ORDER.index(t) + 1]
            assert total({**choice, n: nxt}) > budget or ERR[n][nxt] >= ERR[n][t]


def test_the_first_upgrade_is_the_best_error_saved_per_byte():
    # a: 9.0 saved for 21 bytes (0.43/B) beats b (0.12/B) and emb (0.06/B)
    assert choose_tiers(LOWEST, ERR, SIZE, 100, 166 + 21, ORDER) == {"a": "WARM", "b": "COLD", "emb": "WARM"}


def test_with_room_for_everything_every_tensor_is_at_the_top():
    assert choose_tiers(LOWEST, ERR, SIZE, 100, 10_000, ORDER) == {"a": "HOT", "b": "HOT", "emb": "HOT"}


def test_the_best_of_all_choices_within_a_budget_is_found_on_this_example():
    budget = 240
    best = min((dict(zip(LOWEST, c)) for c in itertools.product(ORDER, ORDER, ["WARM", "HOT"])
                if total(dict(zip(LOWEST, c))) <= budget),
               key=lambda ch: sum(ERR[n][t] for n, t in ch.items()))
    got = choose_tiers(LOWEST, ERR, SIZE, 100, budget, ORDER)
    assert sum(ERR[n][t] for n, t in got.items()) == pytest.approx(sum(ERR[n][t] for n, t in best.items()))


def test_a_budget_below_the_smallest_mix_is_one_clear_error():
    with pytest.raises(TritpackError, match=r"below the smallest mix \(0\.0 MB"):
        choose_tiers(LOWEST, ERR, SIZE, 100, 165, ORDER)
