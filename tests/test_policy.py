"""converters/policy.py: the mixed-precision tier choice, on numbers made here."""

from __future__ import annotations

import itertools

import pytest

from gguf import GGMLQuantizationType as Q

from tritpack_gguf.converters.policy import PRESETS, choose_tiers, min_bpw, palette, preset
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
    choice = choose_tiers(ERR, SIZE, 100, budget)
    assert total(choice) <= budget
    assert all(ORDER.index(choice[n]) >= ORDER.index(LOWEST[n]) for n in choice)
    # no single further upgrade fits the budget and lowers the error
    for n, t in choice.items():
        if t != "HOT":
            nxt = ORDER[ORDER.index(t) + 1]
            assert total({**choice, n: nxt}) > budget or ERR[n][nxt] >= ERR[n][t]


def test_the_first_upgrade_is_the_best_error_saved_per_byte():
    # a: 9.0 saved for 21 bytes (0.43/B) beats b (0.12/B) and emb (0.06/B)
    assert choose_tiers(ERR, SIZE, 100, 166 + 21) == {"a": "WARM", "b": "COLD", "emb": "WARM"}


def test_with_room_for_everything_every_tensor_is_at_the_top():
    assert choose_tiers(ERR, SIZE, 100, 10_000) == {"a": "HOT", "b": "HOT", "emb": "HOT"}


def test_the_best_of_all_choices_within_a_budget_is_found_on_this_example():
    budget = 240
    best = min((dict(zip(LOWEST, c)) for c in itertools.product(ORDER, ORDER, ["WARM", "HOT"])
                if total(dict(zip(LOWEST, c))) <= budget),
               key=lambda ch: sum(ERR[n][t] for n, t in ch.items()))
    got = choose_tiers(ERR, SIZE, 100, budget)
    assert sum(ERR[n][t] for n, t in got.items()) == pytest.approx(sum(ERR[n][t] for n, t in best.items()))


def test_a_budget_below_the_smallest_mix_is_one_clear_error():
    with pytest.raises(TritpackError, match=r"below the smallest mix \(0\.0 MB"):
        choose_tiers(ERR, SIZE, 100, 165)


def test_options_off_the_convex_hull_are_skipped_and_the_fill_uses_them():
    # "mid" saves less per byte than going straight to "big": the greedy steps skip it, and the fill
    # takes it only when "big" does not fit
    err = {"t": {"small": 10.0, "mid": 8.0, "big": 0.0}, "u": {"small": 5.0, "big": 4.0}}
    size = {"t": {"small": 10, "mid": 20, "big": 30}, "u": {"small": 10, "big": 100}}
    assert choose_tiers(err, size, 0, 50) == {"t": "big", "u": "small"}
    assert choose_tiers(err, size, 0, 35) == {"t": "mid", "u": "small"}
    # equal sizes: the one with the least error
    assert choose_tiers({"t": {"x": 3.0, "y": 2.0}}, {"t": {"x": 10, "y": 10}}, 0, 10) == {"t": "y"}


def test_the_choice_is_never_worse_than_the_best_of_all_on_random_examples():
    rng = __import__("numpy").random.default_rng(0)
    for _ in range(40):
        err, size = {}, {}
        for n in "abc":
            k = int(rng.integers(2, 5))
            s = sorted(int(v) for v in rng.choice(range(5, 60), size=k, replace=False))
            e = sorted((float(v) for v in rng.random(k) * 10), reverse=True)
            err[n], size[n] = {f"o{i}": e[i] for i in range(k)}, {f"o{i}": s[i] for i in range(k)}
        budget = int(rng.integers(sum(min(v.values()) for v in size.values()), 150))
        got = choose_tiers(err, size, 0, budget)
        assert sum(size[n][o] for n, o in got.items()) <= budget
        best = min((sum(err[n][o] for n, o in zip("abc", c)) for c in itertools.product(*(err[n] for n in "abc"))
                    if sum(size[n][o] for n, o in zip("abc", c)) <= budget))
        # greedy on the hull plus the fill: within a small margin of the optimum on these examples
        assert sum(err[n][o] for n, o in got.items()) <= best * 1.5 + 1e-9


def test_the_palette_follows_the_rows_and_the_imatrix():
    assert Q.Q6_K not in palette(576, True) and Q.Q5_0 in palette(576, True)
    assert {Q.Q6_K, Q.Q5_K, Q.Q4_K, Q.Q3_K, Q.Q2_K} <= set(palette(1536, False))
    assert Q.IQ3_S not in palette(1536, False) and Q.IQ3_S in palette(1536, True)
    assert palette(1536, True)[0] == Q.TP1 and palette(1536, True)[-1] == Q.F16
    out = palette(1536, True, min_bpw("output.weight", False))
    assert Q.TP1 not in out and Q.Q2_K not in out and Q.Q4_K in out and Q.TP4 in out
    assert min_bpw("token_embd.weight", True) == 4.0   # tied: it is the output too
    emb = palette(1536, True, min_bpw("token_embd.weight", False))
    assert Q.TP1 not in emb and Q.IQ2_XS not in emb and Q.Q2_K in emb and Q.IQ2_S in emb
    assert min_bpw("blk.0.ffn_up.weight", False) == 0.0
    assert palette(48, True) == [Q.F16]  # no block fits but F16's


def test_presets_are_checked():
    assert preset("q4_k_m") == "Q4_K_M" and "Q6_K" in PRESETS
    with pytest.raises(TritpackError, match="unknown preset 'Q4_K_X'"):
        preset("Q4_K_X")
