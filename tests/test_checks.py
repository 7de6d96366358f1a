"""``rims_rl.checks``: the one home of the checks of user-given values, and the wording of each refusal."""

from __future__ import annotations

import math

import pytest

from rims_rl.checks import (
    check_int,
    check_number,
    check_positive,
    check_positive_number,
    hint,
    ranked_choices,
    safe_name,
    unknown_choice_error,
)


class PickedError(ValueError):
    """A caller's own error type (a UserError, a CheckpointError, ...)."""


@pytest.mark.parametrize("value", [0, -3, True, False, 1.0, 2.5, "3", None, [1]])
def test_a_positive_integer_is_an_int_above_zero_and_never_a_bool(value: object) -> None:
    with pytest.raises(
        ValueError, match=f"^n_units must be a positive integer, got {value!r}$".replace("[", r"\[")
    ):
        check_positive("n_units", value)


def test_checks_return_the_value_and_raise_the_callers_error_type() -> None:
    assert (
        check_positive("n", 3) == 3 and check_int("seed", 0, 0) == 0 and check_number("g", 1, 0.0, 1.0) == 1.0
    )
    with pytest.raises(PickedError, match="--episodes must be a positive integer, got 0"):
        check_positive("--episodes", 0, error=PickedError)
    with pytest.raises(TypeError):  # nn.LSTM's type for a width that is no integer; ValueError for 0
        check_positive("width", 2.0, type_error=TypeError)
    with pytest.raises(ValueError) as caught:
        check_positive("width", 0, type_error=TypeError)
    assert type(caught.value) is ValueError


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check_int("seed", -1, 0), "seed must be an integer >= 0, got -1"),
        (lambda: check_int("net_arch", 5000, 1, 4096), "net_arch must be an integer in [1, 4096], got 5000"),
        (lambda: check_int("net_arch", True, 1, 4096), "net_arch must be an integer in [1, 4096], got True"),
        (lambda: check_number("gamma", 1.5, 0.0, 1.0), "gamma must be a number in [0, 1], got 1.5"),
        (lambda: check_number("vf_coef", math.nan, 0.0), "vf_coef must be a number >= 0, got nan"),
        (lambda: check_number("vf_coef", False, 0.0), "vf_coef must be a number >= 0, got False"),
        (lambda: check_positive_number("lr", 0), "lr must be a positive finite number, got 0"),
        (lambda: check_positive_number("lr", math.inf), "lr must be a positive finite number, got inf"),
    ],
)
def test_ranges_and_numbers_name_the_value_and_the_bounds(call: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        call()  # type: ignore[operator]
    assert str(caught.value) == message


def test_did_you_mean_hints() -> None:
    assert hint("n_unit", ["n_units", "k"]) == " (did you mean 'n_units'?)"
    assert hint("zzz", ["n_units", "k"]) == ""


def test_unknown_choices_are_ranked_closest_first() -> None:
    assert ranked_choices(5, [1, 7, 4, 12]) == ["4", "7", "1", "12"]  # numbers: by value
    assert ranked_choices("alE/breakout-V5", ["ALE/Pong-v5", "ALE/Breakout-v5"])[0] == "ALE/Breakout-v5"
    assert ranked_choices("DoorKye", ["Empty", "DoorKey", "Doors"])[:2] == ["DoorKey", "Doors"]
    err = unknown_choice_error("suite", "bad", [f"s{i}" for i in range(30)], where="in x", error=PickedError)
    assert isinstance(err, PickedError)
    assert str(err).startswith("unknown suite 'bad' in x. Valid choices (closest first): s0, s1")
    assert str(err).endswith(", s4, ... and 25 more (`list` shows them)")  # a long list: the closest only
    short = unknown_choice_error("suite", "bad", [f"s{i}" for i in range(25)])
    assert str(short).endswith(", s24")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ALE/Pong-v5", "ALE_Pong-v5"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("..", "_"),
        ("", "_"),
        ("a b\nc", "a_b_c"),
        ("x" * 300, "x" * 100),
    ],
)
def test_safe_names_are_one_path_component(name: str, expected: str) -> None:
    assert safe_name(name) == expected
    assert safe_name("..", default="env") == "env"
