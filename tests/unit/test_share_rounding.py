"""Rounding is not an error: share maps over 1 by rounding are scaled to 1, a larger excess is an error."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from domain.catalog import ShowFields, normalise_shares, share_excess_allowed
from domain.imports import normalised_warning, parse_row, read_header, with_normalised_warning

HEADER = "external_id,name,avg_downloads,geo,age"


def row(geo: str, age: str = "") -> tuple[dict[str, object] | None, list[str], list[str | None]]:
    """Parses one shows row: (record, normalised columns, columns of the errors)."""
    normalised: list[str] = []
    record, errors = parse_row(
        "shows", read_header("shows", HEADER.split(",")), ["s1", "Show", "100", geo, age], 2, normalised
    )
    return record, normalised, [e.column for e in errors]


def test_rounded_shares_are_scaled_down_proportionally_to_one() -> None:
    shares, scaled = normalise_shares({"US": 0.62, "GB": 0.2, "CA": 0.19}, "geo")
    assert scaled
    assert math.isclose(sum(shares.values()), 1.0, abs_tol=1e-12)
    assert math.isclose(shares["US"], 0.62 / 1.01) and math.isclose(shares["CA"], 0.19 / 1.01)
    # Scaled once is stable: the stored values validate as they are, not scaled again.
    assert normalise_shares(shares, "geo") == (shares, False)


@pytest.mark.parametrize(
    ("shares", "allowed"),
    [
        ({"US": 0.51, "GB": 0.51}, True),  # exactly 1 + 0.01 x 2
        ({"a": 0.34, "b": 0.35, "c": 0.34}, True),  # exactly 1 + 0.01 x 3
        ({"US": 0.52, "GB": 0.51}, False),  # 1.03 > 1.02
        ({"US": 1.0, "GB": 0.03}, False),
        ({"US": 0.8, "GB": 0.4}, False),
    ],
)
def test_the_tolerance_is_one_hundredth_per_share_listed(shares: dict[str, float], allowed: bool) -> None:
    if allowed:
        out, scaled = normalise_shares(shares, "geo")
        assert scaled and math.isclose(sum(out.values()), 1.0, abs_tol=1e-12)
    else:
        with pytest.raises(ValueError, match=r"^geo shares add up to 1\.\d{4}, more than 1 \(up to "):
            normalise_shares(shares, "geo")


def test_the_allowed_sum() -> None:
    assert [str(share_excess_allowed(n)) for n in (1, 2, 6)] == ["1.01", "1.02", "1.06"]


def test_sums_up_to_one_stay_as_they_are() -> None:
    partial = {"US": 0.5, "GB": 0.1}
    assert normalise_shares(partial, "geo") == (partial, False)
    exact = {"a": 0.1, "b": 0.2, "c": 0.7}  # 1.0000000000000002 as floats, 1 as written
    assert normalise_shares(exact, "age") == (exact, False)


def test_the_api_model_stores_normalised_shares_and_rejects_a_larger_excess() -> None:
    show = ShowFields.model_validate(
        {
            "name": "S",
            "avg_downloads": 1,
            "geo": {"us": 0.5, "gb": 0.51},
            "age": {"18-24": 0.6, "25-34": 0.41},
        }
    )
    assert set(show.geo) == {"US", "GB"} and math.isclose(sum(show.geo.values()), 1.0, abs_tol=1e-12)
    assert math.isclose(sum(show.age.values()), 1.0, abs_tol=1e-12)
    with pytest.raises(ValidationError) as info:
        ShowFields.model_validate({"name": "S", "avg_downloads": 1, "age": {"18-24": 0.6, "25-34": 0.45}})
    (error,) = info.value.errors()
    assert error["loc"] == ("age",) and "age shares add up to 1.0500, more than 1" in error["msg"]


def test_an_import_row_with_rounded_shares_is_good_and_says_which_columns_were_scaled() -> None:
    record, normalised, errors = row("US:62%;GB:20%;CA:19%", "18-24:0.5;25-34:0.51")
    assert errors == [] and record is not None
    assert normalised == ["geo", "age"]
    geo, age = record["geo"], record["age"]
    assert isinstance(geo, dict) and isinstance(age, dict)
    assert math.isclose(sum(geo.values()), 1.0, abs_tol=1e-12)
    assert math.isclose(sum(age.values()), 1.0, abs_tol=1e-12)
    assert geo["US"] > geo["GB"] > geo["CA"]


def test_an_import_row_summing_to_one_or_less_is_not_counted() -> None:
    record, normalised, errors = row("US:0.62;GB:0.38", "18-24:0.5")
    assert errors == [] and normalised == []
    assert (
        record is not None and record["geo"] == {"US": 0.62, "GB": 0.38} and record["age"] == {"18-24": 0.5}
    )


def test_an_import_row_over_the_tolerance_is_an_error_naming_the_column() -> None:
    record, normalised, errors = row("US:0.62;GB:0.38", "18-24:0.6;25-34:0.45")
    assert record is None and errors == ["age"] and normalised == []
    # A row that fails for another reason is not counted as normalised either.
    normalised_list: list[str] = []
    record, errs = parse_row(
        "shows",
        read_header("shows", HEADER.split(",")),
        ["s1", "", "100", "US:0.51;GB:0.51", ""],
        2,
        normalised_list,
    )
    assert record is None and [e.column for e in errs] == ["name"] and normalised_list == []


def test_one_warning_per_file_with_the_count() -> None:
    warnings = with_normalised_warning(["ignored unknown columns: x"], 3)
    assert warnings == ["ignored unknown columns: x", normalised_warning(3)]
    assert "3 row(s)" in warnings[1] and "scaled down proportionally" in warnings[1]
    later = with_normalised_warning([*warnings, "another"], 7)
    assert later == ["ignored unknown columns: x", normalised_warning(7), "another"]
    assert with_normalised_warning(["a"], 0) == ["a"]
