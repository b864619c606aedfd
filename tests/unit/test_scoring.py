"""Match scoring: the NumPy batch scorer agrees with the reference, and the scores make sense."""

from __future__ import annotations

import math
import uuid
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from db.matching import STAGE_COLUMNS, Features, MatchEncoder
from domain.catalog import AGE_BANDS, GARM_CATEGORIES
from domain.scoring import (
    DEFAULT_WEIGHTS,
    HORIZON_DAYS,
    SIGNALS,
    AdvertiserFeatures,
    ShowFeatures,
    ShowMatrix,
    explain,
    flight_windows,
    free_slots_in_window,
    rationale,
    score_batch,
    score_pair,
    top_k,
)
from tests.helpers.scoring import FINTECH
from tests.helpers.scoring import show as show_features

COUNTRIES = ("US", "us", "CA", "GB", "de", "FR")
CATEGORIES = ("Business", "business", "Technology", "SPORTS", "Sports", "Leisure", "News")
RISKS = ("low", "medium", "high", "floor", "High")
TOLERANCES = ("low", "medium", "high")

shares = st.floats(0, 1, allow_nan=False)
money = st.floats(0, 100_000, allow_nan=False)


@st.composite
def free_slots(draw: st.DrawFn) -> tuple[int, ...]:
    """Mostly zeros with a few small counts, or an evenly booked calendar."""
    if draw(st.booleans()):
        return (draw(st.integers(0, 2)),) * HORIZON_DAYS
    days = [0] * HORIZON_DAYS
    for day, n in draw(
        st.dictionaries(st.integers(0, HORIZON_DAYS - 1), st.integers(0, 3), max_size=6)
    ).items():
        days[day] = n
    return tuple(days)


@st.composite
def shows(draw: st.DrawFn, i: int) -> ShowFeatures:
    return ShowFeatures(
        id=f"s{i}",
        name=f"Show {i}",
        geo=draw(st.dictionaries(st.sampled_from(COUNTRIES), shares, max_size=4)),
        age=draw(st.dictionaries(st.sampled_from(AGE_BANDS), shares, max_size=4)),
        female_share=draw(st.none() | shares),
        categories=tuple(draw(st.lists(st.sampled_from(CATEGORIES), max_size=3))),
        brand_safety=draw(
            st.dictionaries(st.sampled_from(GARM_CATEGORIES[:4]), st.sampled_from(RISKS), max_size=2)
        ),
        cpm_usd=draw(st.none() | st.floats(0, 80, allow_nan=False)),
        avg_downloads=draw(st.integers(0, 500_000)),
        recent_downloads=draw(st.none() | st.just(0.0) | money),
        prior_downloads=draw(st.none() | st.just(0.0) | money),
        free_mid_slots=draw(free_slots()),
    )


@st.composite
def advertisers(draw: st.DrawFn, j: int) -> AdvertiserFeatures:
    start = draw(st.integers(0, HORIZON_DAYS))
    end = draw(st.integers(0, HORIZON_DAYS) | st.integers(start, min(HORIZON_DAYS, start + 20)))
    return AdvertiserFeatures(
        id=f"a{j}",
        name=f"Brand {j}",
        target_geo=tuple(draw(st.lists(st.sampled_from((*COUNTRIES, "ZZ")), max_size=3))),
        target_age=tuple(draw(st.lists(st.sampled_from(AGE_BANDS), max_size=3))),
        target_categories=tuple(draw(st.lists(st.sampled_from((*CATEGORIES, "Gardening")), max_size=3))),
        target_gender=draw(st.sampled_from((None, "female", "male"))),
        tolerance=draw(st.sampled_from(TOLERANCES)),
        budget_usd=draw(st.none() | st.just(0.0) | money),
        flight_start_day=start,
        flight_end_day=end,
    )


weights_st = st.dictionaries(
    st.sampled_from(SIGNALS), st.just(0.0) | st.floats(0, 5, allow_nan=False), min_size=1
).filter(lambda w: sum(w.values()) > 0)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_batch_agrees_with_the_reference(data: st.DataObject) -> None:
    show_list = [data.draw(shows(i)) for i in range(data.draw(st.integers(3, 20)))]
    adv_list = [data.draw(advertisers(j)) for j in range(data.draw(st.integers(1, 8)))]
    weights = data.draw(weights_st)
    past = data.draw(
        st.dictionaries(
            st.tuples(st.integers(0, len(show_list) - 1), st.integers(0, len(adv_list) - 1)),
            st.floats(-0.5, 1.5, allow_nan=False),
            max_size=10,
        )
    )
    vocab = data.draw(st.none() | st.just(["fr", "JP"]))
    matrix = ShowMatrix.build(show_list, country_vocab=vocab, category_vocab=vocab)
    result = score_batch(matrix, adv_list, weights, past)
    assert result.scores.shape == result.excluded.shape == (len(show_list), len(adv_list))
    assert result.signals.shape == (len(SIGNALS), len(show_list), len(adv_list))
    for i, show in enumerate(show_list):
        for j, adv in enumerate(adv_list):
            ref = score_pair(show, adv, weights, past.get((i, j)))
            assert abs(result.scores[i, j] - ref.score) <= 1e-9
            for k, name in enumerate(SIGNALS):
                assert abs(result.signals[k, i, j] - ref.signals[name]) <= 1e-9, name
                assert 0.0 <= ref.signals[name] <= 1.0
            assert bool(result.excluded[i, j]) == (ref.excluded is not None)
            assert 0.0 <= ref.score <= 100.0
            if ref.excluded is not None:
                assert ref.score == 0.0
            assert rationale(show, adv, ref, weights)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_explain_words_a_stored_pair_as_the_rationale_of_its_ranking(data: st.DataObject) -> None:
    # What a recalculation keeps per pair (free slots in the flight, past delivery, trend,
    # weights) is enough to word it later exactly as rationale() words the pair it scored.
    show_list = [data.draw(shows(i)) for i in range(data.draw(st.integers(1, 6)))]
    adv_list = [data.draw(advertisers(j)) for j in range(data.draw(st.integers(1, 4)))]
    weights = data.draw(weights_st)
    matrix = ShowMatrix.build(show_list)
    windows = flight_windows(adv_list)
    for i, show in enumerate(show_list):
        for j, adv in enumerate(adv_list):
            past = data.draw(st.none() | st.floats(-0.5, 1.5, allow_nan=False))
            ref = score_pair(show, adv, weights, past)
            free = int(free_slots_in_window(matrix, windows, [i], [j])[0])
            kept = replace(show, free_mid_slots=())
            assert explain(kept, adv, weights, free_slots=free, past_delivery=past) == rationale(
                show, adv, ref, weights
            )


def test_match_encoder_writes_python_rounded_scores_and_signals_and_the_facts() -> None:
    booked = replace(FINTECH, id=str(uuid.uuid4()), budget_usd=800.0)
    feats = Features(
        shows=[
            replace(ALIGNED, id=str(uuid.uuid4())),
            replace(BOOKED_UP, id=str(uuid.uuid4()), recent_downloads=None, prior_downloads=None),
        ],
        advertisers=[replace(FINTECH, id=str(uuid.uuid4())), booked],
        past_delivery={},
        weights=dict(DEFAULT_WEIGHTS),
    )
    # Ties at the rounding digit go to even as in round(); 0.125 and 2.675 are not what they print.
    scores = np.array([83.125, 2.675, 100.0, 0.0])
    signals = np.tile(np.array([[0.00005], [0.12345], [1.0], [0.99995], [0.5], [1 / 3]]), (1, 4))
    data = MatchEncoder(feats).encode(
        np.array([0, 1, 0, 1]),
        np.array([0, 0, 1, 1]),
        scores,
        signals,
        np.array([3, 0, 12, 123]),
        np.array([np.nan, 0.96, np.nan, np.nan]),
    )
    lines = data.decode().splitlines()
    assert len(lines) == 4
    # One width for the whole batch: padding is leading spaces of a number, never inside a NULL.
    assert len({len(line) for line in lines}) == 1
    for k, line in enumerate(lines):
        fields = line.split("\t")
        assert len(fields) == len(STAGE_COLUMNS)
        row = dict(zip(STAGE_COLUMNS, fields, strict=True))
        assert all(v.strip() == v for v in (row["advertiser_id"], row["recent_downloads"]))
        assert row["advertiser_id"] == feats.advertisers[[0, 0, 1, 1][k]].id
        assert row["show_id"] == feats.shows[[0, 1, 0, 1][k]].id
        assert float(row["score"]) == round(float(scores[k]), 2)
        for m, name in enumerate(SIGNALS):
            assert float(row[name]) == round(float(signals[m, k]), 4), name
        assert int(row["free_slots"]) == [3, 0, 12, 123][k]
        assert row["past_delivery"] == ["\\N", "0.96", "\\N", "\\N"][k]
        show = feats.shows[[0, 1, 0, 1][k]]
        for column, value in (
            ("recent_downloads", show.recent_downloads),
            ("prior_downloads", show.prior_downloads),
        ):
            assert row[column] == ("\\N" if value is None else repr(float(value))), column


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.lists(st.sampled_from((0.0, 1.0, 2.5, -np.inf, np.nan)), min_size=5, max_size=5),
        min_size=1,
        max_size=6,
    ),
    k=st.integers(0, 7),
    axis=st.sampled_from((0, 1)),
)
def test_top_k_is_a_stable_descending_sort(values: list[list[float]], k: int, axis: int) -> None:
    arr = np.array(values)
    ranked = np.where(np.isnan(arr), -np.inf, arr)
    expected = np.argsort(-ranked, axis=axis, kind="stable")
    keep = min(k, arr.shape[axis])
    assert np.array_equal(top_k(arr, k, axis), np.take(expected, np.arange(keep), axis=axis))


NO_SLOTS = (0,) * HORIZON_DAYS


ALIGNED = show_features(
    "Founders Daily",
    avg_downloads=40_000,
    cpm_usd=25.0,
    categories=("Business", "Technology"),
    geo={"US": 0.8, "CA": 0.1},
    age={"25-34": 0.6, "35-44": 0.3},
    brand_safety={"debated_social_issues": "low"},
    recent_downloads=11_400.0,
    prior_downloads=10_000.0,
)
MISALIGNED = show_features(
    "Garden Hour",
    avg_downloads=5_000,
    cpm_usd=18.0,
    categories=("Leisure",),
    geo={"GB": 0.9},
    age={"55+": 0.8},
)
HIGH_RISK = show_features(
    "Late Night Rants",
    categories=("Business",),
    geo={"US": 0.9},
    age={"25-34": 0.7},
    brand_safety={"hate_speech": "high", "obscenity_profanity": "medium"},
)
FLOOR = show_features(
    "After Dark", categories=("Business",), geo={"US": 0.9}, brand_safety={"adult_explicit": "floor"}
)
BOOKED_UP = replace(ALIGNED, id="booked", name="Booked Up", free_mid_slots=NO_SLOTS)
TENANT = [ALIGNED, MISALIGNED, HIGH_RISK, FLOOR, BOOKED_UP]

GARDENING = replace(
    FINTECH,
    id="grow",
    name="Grow",
    target_geo=("GB",),
    target_age=("55+",),
    target_categories=("Leisure",),
    tolerance="high",
)


def test_an_aligned_pair_outranks_a_misaligned_one() -> None:
    aligned, misaligned = score_pair(ALIGNED, FINTECH), score_pair(MISALIGNED, FINTECH)
    assert 0 <= misaligned.score < aligned.score <= 100
    assert aligned.signals["topic"] == 1.0 and aligned.signals["geo"] == pytest.approx(0.9)
    assert misaligned.signals["geo"] == 0.0 and misaligned.signals["topic"] == 0.0
    # The other advertiser sees it the other way round.
    assert score_pair(MISALIGNED, GARDENING).score > score_pair(ALIGNED, GARDENING).score


def test_floor_and_above_tolerance_risks_are_excluded_and_named() -> None:
    above = score_pair(HIGH_RISK, FINTECH)
    assert above.score == 0.0
    assert above.excluded == "brand safety: hate_speech is high, above this advertiser's medium tolerance"
    assert above.signals["brand_safety"] == 0.25 and above.signals["geo"] > 0
    assert rationale(HIGH_RISK, FINTECH, above).startswith(above.excluded)

    floor = score_pair(FLOOR, GARDENING)
    assert floor.score == 0.0 and floor.excluded == "brand safety: adult_explicit is at the floor"
    assert rationale(FLOOR, GARDENING, floor).startswith("brand safety: adult_explicit is at the floor; ")

    # A high tolerance accepts a high risk.
    within = score_pair(HIGH_RISK, GARDENING)
    assert within.excluded is None and within.score > 0


def test_the_batch_scores_the_tenant_like_the_reference_and_stays_in_range() -> None:
    result = score_batch(ShowMatrix.build(TENANT), [FINTECH, GARDENING])
    assert ((result.scores >= 0) & (result.scores <= 100)).all()
    assert result.excluded.tolist() == [
        [False, False],
        [False, False],
        [True, False],
        [True, True],
        [False, False],
    ]
    for i, s in enumerate(TENANT):
        for j, a in enumerate((FINTECH, GARDENING)):
            assert result.scores[i, j] == pytest.approx(score_pair(s, a).score, abs=1e-9)


def test_top_k_never_returns_excluded_pairs_when_used_as_documented() -> None:
    result = score_batch(ShowMatrix.build(TENANT), [FINTECH, GARDENING])
    masked = result.masked_scores()
    best = top_k(masked, 4, axis=0)
    for j in range(2):
        eligible = [int(i) for i in best[:, j] if masked[i, j] != -np.inf]
        assert not any(result.excluded[i, j] for i in eligible)
        assert [result.scores[i, j] for i in eligible] == sorted(
            (result.scores[i, j] for i in eligible), reverse=True
        )
    # Ledgerly: 3 eligible shows, the aligned one first; the excluded ones never show up.
    assert [int(i) for i in best[:, 0] if masked[i, 0] != -np.inf][0] == 0
    assert {int(i) for i in best[:, 0] if masked[i, 0] != -np.inf} == {0, 1, 4}
    per_show = top_k(masked, 1, axis=1)
    assert per_show.shape == (len(TENANT), 1)
    assert masked[3, per_show[3, 0]] == -np.inf  # every advertiser excluded: the caller drops it


def test_rationale_names_strong_and_weak_signals_in_plain_words() -> None:
    pair = score_pair(ALIGNED, FINTECH)
    words = rationale(ALIGNED, FINTECH, pair)
    assert words == (
        "90% of the audience is in your target countries; covers Business, Technology as targeted; "
        "downloads up 14% over the last 28 days"
    )

    booked = replace(FINTECH, budget_usd=800.0)
    pair = score_pair(BOOKED_UP, booked)
    words = rationale(BOOKED_UP, booked, pair)
    assert "% of the audience is in your target countries" in words
    assert words.endswith(
        "no free mid-roll slot before 2026-12-15, a mid-roll costs about $1,000, over your $800 budget"
    )

    demographic = {"demographic": 1.0, "topic": 1.0}
    assert "mostly 25-34 as targeted" in rationale(
        ALIGNED, FINTECH, score_pair(ALIGNED, FINTECH), demographic
    )
    misaligned = score_pair(MISALIGNED, FINTECH)
    assert rationale(MISALIGNED, FINTECH, misaligned).endswith(
        "none of the audience is in your target countries (US, CA)"
    )
    words = rationale(MISALIGNED, FINTECH, misaligned, {"topic": 1.0})
    assert words.endswith("no overlap with the targeted categories (business, Technology)")


def test_rationale_phrases_for_lift_inventory_and_brand_safety() -> None:
    pair = score_pair(ALIGNED, FINTECH, {"lift": 1, "brand_safety": 1}, past_delivery=0.96)
    words = rationale(ALIGNED, FINTECH, pair, {"lift": 1, "brand_safety": 1})
    assert "delivered 96% of goal on your past IOs, downloads up 14% over the last 28 days" in words
    assert "highest GARM risk: debated_social_issues at low, within your medium tolerance" in words
    falling = replace(MISALIGNED, recent_downloads=7_000.0, prior_downloads=10_000.0)
    assert "downloads down 30%" in rationale(falling, FINTECH, score_pair(falling, FINTECH), {"lift": 1})
    sparse = replace(ALIGNED, free_mid_slots=(0, 1, 0, 2) + (0,) * (HORIZON_DAYS - 4))
    only_inventory = {"inventory": 1.0}
    words = rationale(sparse, FINTECH, score_pair(sparse, FINTECH, only_inventory), only_inventory)
    assert words.startswith("3 free mid-roll slots in your flight window")


def test_weights_change_the_ranking() -> None:
    big_uk = show_features("UK Giant", categories=("Business",), geo={"GB": 1.0}, age={"25-34": 1.0})
    small_us = show_features("US Niche", categories=("Leisure",), geo={"US": 1.0}, age={"55+": 1.0})
    adv = replace(FINTECH, target_geo=("US",), target_age=(), target_categories=("Business",))
    matrix = ShowMatrix.build([big_uk, small_us])
    topic_only = score_batch(matrix, [adv], {"topic": 1.0})
    geo_only = score_batch(matrix, [adv], {"geo": 1.0, "topic": 0.0})
    assert top_k(topic_only.masked_scores(), 1, axis=0)[0, 0] == 0
    assert top_k(geo_only.masked_scores(), 1, axis=0)[0, 0] == 1
    assert geo_only.scores[1, 0] == 100.0 and topic_only.scores[1, 0] == 0.0


def test_weights_are_validated() -> None:
    zero = dict.fromkeys(SIGNALS, 0.0)
    matrix = ShowMatrix.build([ALIGNED])
    with pytest.raises(ValueError, match="at least one"):
        score_pair(ALIGNED, FINTECH, zero)
    with pytest.raises(ValueError, match="at least one"):
        score_batch(matrix, [FINTECH], zero)
    with pytest.raises(ValueError, match="at least one"):
        score_pair(ALIGNED, FINTECH, {})
    with pytest.raises(ValueError, match="unknown"):
        score_pair(ALIGNED, FINTECH, {"geography": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        score_batch(matrix, [FINTECH], {"geo": -1.0, "topic": 2.0})
    # Only relative weights matter; a missing key counts as 0.
    scaled = {k: 10 * v for k, v in DEFAULT_WEIGHTS.items()}
    assert score_pair(ALIGNED, FINTECH, scaled).score == pytest.approx(score_pair(ALIGNED, FINTECH).score)
    assert score_pair(ALIGNED, FINTECH, {"topic": 2.0}).score == 100.0


def test_edge_cases_follow_the_documented_formulas() -> None:
    unknown = show_features("Unknown")
    adv = replace(FINTECH, target_gender="female", budget_usd=None)
    pair = score_pair(unknown, adv)
    assert pair.signals["geo"] == 0.5 and pair.signals["demographic"] == 0.5
    assert pair.signals["topic"] == 0.0 and pair.signals["lift"] == 0.5
    assert pair.signals["inventory"] == 1.0 and pair.signals["brand_safety"] == 1.0
    untargeted = replace(FINTECH, target_geo=(), target_age=(), target_categories=())
    pair = score_pair(unknown, untargeted)
    assert pair.signals["geo"] == pair.signals["demographic"] == pair.signals["topic"] == 1.0
    # An empty flight window and a zero budget give no inventory at all.
    broke = replace(FINTECH, flight_start_day=40, flight_end_day=40, budget_usd=0.0)
    assert score_pair(ALIGNED, broke).signals["inventory"] == 0.0
    # One free slot in a two-week window fills half of it.
    one = replace(ALIGNED, free_mid_slots=(1,) + (0,) * (HORIZON_DAYS - 1), cpm_usd=None)
    two_weeks = replace(FINTECH, flight_end_day=14)
    assert score_pair(one, two_weeks).signals["inventory"] == 0.75
    assert math.isclose(score_pair(ALIGNED, FINTECH, past_delivery=2.0).signals["lift"], 0.5 * 0.57 + 0.5)
    with pytest.raises(ValueError, match="past_delivery"):
        score_batch(ShowMatrix.build([ALIGNED]), [FINTECH], past_delivery={(1, 0): 0.5})
