"""Advertiser x show match scores: six explainable signals, a 0-100 score and a plain-English rationale.

Pure: no I/O. The worker loads `ShowFeatures` and `AdvertiserFeatures` and calls this module.
`score_pair` is the readable reference (one pair, plain Python); `score_batch` computes the same
formulas with NumPy for every show against a chunk of advertisers and agrees with it to 1e-9.

Country codes compare case-insensitively (upper-cased), categories and GARM categories too
(lower-cased); duplicate targets count once. Every signal is in [0, 1]:

- geo: the sum of the show's geo shares over the advertiser's target countries, capped at 1.
  No target countries -> 1.0. Targets given but the show has no geo data -> 0.5 (unknown).
- demographic: age = the sum of the show's age shares over the target bands, capped at 1;
  no target bands -> 1.0; targets given but the show has no age data -> 0.5. Gender factor:
  female_share when the advertiser targets "female", 1 - female_share for "male", 0.5 when
  the show's female_share is unknown. demographic = age without gender targeting, otherwise
  0.5 * age + 0.5 * gender.
- topic: |show categories & target categories| / |target categories|; no target categories ->
  1.0; a show without categories -> 0.0 when the advertiser targets any.
- lift: trend = clip(0.5 + 0.5 * (recent - prior) / prior, 0, 1) when both 28-day download
  totals are known and prior > 0, else 0.5. With a past delivery share (delivered / goal on this
  advertiser's past IOs on this show): lift = 0.5 * trend + 0.5 * clip(past_delivery, 0, 1);
  without: lift = trend.
- inventory: 0.5 * slot_fit + 0.5 * price_fit. slot_fit = min(1, free / max(1, weeks)) where
  free = free mid-roll slots on days [flight_start_day, flight_end_day) and weeks =
  ceil((end - start) / 7); an empty window (end <= start) gives 0. price_fit = 1 when the budget
  or the CPM is unknown; otherwise spot_cost = cpm_usd * avg_downloads / 1000 and price_fit = 1
  if spot_cost <= budget_usd else budget_usd / spot_cost (so 0 for a zero budget, unless the spot
  is free).
- brand_safety: GARM risk rank low=1, medium=2, high=3, floor=4, absent=0; tolerance rank
  low=1, medium=2, high=3. The pair is excluded when any category is at the floor or above the
  tolerance; brand_safety = 1 - max_rank / 4 (reported for excluded pairs too).

score = 100 * sum(w_i * s_i) / sum(w_i) over SIGNALS, summed in SIGNALS order and clamped to
[0, 100] against rounding. A weight missing from the mapping counts as 0; all-zero, negative,
non-finite or unknown weights raise ValueError. Excluded pairs score 0 and still report their
signals.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
import numpy.typing as npt

from domain.catalog import AGE_BANDS, GARM_CATEGORIES, RiskLevel, Tolerance

SIGNALS: tuple[str, ...] = ("geo", "demographic", "topic", "lift", "inventory", "brand_safety")
DEFAULT_WEIGHTS: dict[str, float] = {
    "geo": 0.25,
    "demographic": 0.20,
    "topic": 0.20,
    "lift": 0.10,
    "inventory": 0.15,
    "brand_safety": 0.10,
}
HORIZON_DAYS = 365

RISK_RANK: dict[str, int] = {
    RiskLevel.LOW.value: 1,
    RiskLevel.MEDIUM.value: 2,
    RiskLevel.HIGH.value: 3,
    RiskLevel.FLOOR.value: 4,
}
TOLERANCE_RANK: dict[str, int] = {Tolerance.LOW.value: 1, Tolerance.MEDIUM.value: 2, Tolerance.HIGH.value: 3}
_FLOOR = RISK_RANK[RiskLevel.FLOOR.value]
_LEVEL_NAME = {rank: level for level, rank in RISK_RANK.items()}
_GARM_ORDER = {c: i for i, c in enumerate(GARM_CATEGORIES)}
_GENDERS = ("female", "male")

Float64Array = npt.NDArray[np.float64]
Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ShowFeatures:
    """What scoring needs to know about one show."""

    id: str
    name: str
    geo: Mapping[str, float]
    age: Mapping[str, float]
    female_share: float | None
    categories: tuple[str, ...]
    brand_safety: Mapping[str, str]
    cpm_usd: float | None
    avg_downloads: int
    recent_downloads: float | None
    prior_downloads: float | None
    free_mid_slots: tuple[int, ...]


@dataclass(frozen=True)
class AdvertiserFeatures:
    """What scoring needs to know about one advertiser and its flight."""

    id: str
    name: str
    target_geo: tuple[str, ...]
    target_age: tuple[str, ...]
    target_categories: tuple[str, ...]
    target_gender: str | None
    tolerance: str
    budget_usd: float | None
    flight_start_day: int
    flight_end_day: int
    flight_end_date: date | None = None


@dataclass(frozen=True)
class PairScore:
    """One pair's score, its six signals and, for an excluded pair, why."""

    score: float
    signals: dict[str, float]
    excluded: str | None


def _country(code: str) -> str:
    return code.strip().upper()


def _category(label: str) -> str:
    return label.strip().lower()


def _band(band: str) -> str:
    return band.strip()


def _unit(x: float) -> float:
    return min(1.0, max(0.0, x))


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _shares(raw: Mapping[str, float], key: Callable[[str], str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, share in raw.items():
        nk = key(k)
        out[nk] = out.get(nk, 0.0) + float(share)
    return out


def _risks(show: ShowFeatures) -> dict[str, int]:
    out: dict[str, int] = {}
    for category, level in show.brand_safety.items():
        rank = RISK_RANK.get(str(level).strip().lower())
        if rank is None:
            raise ValueError(f"show {show.id}: unknown risk level {level!r} for {category!r}")
        nk = _category(category)
        out[nk] = max(out.get(nk, 0), rank)
    return out


def _tolerance(adv: AdvertiserFeatures) -> str:
    tol = str(adv.tolerance).strip().lower()
    if tol not in TOLERANCE_RANK:
        raise ValueError(f"advertiser {adv.id}: unknown brand-safety tolerance {adv.tolerance!r}")
    return tol


def _gender(adv: AdvertiserFeatures) -> str | None:
    if adv.target_gender is None:
        return None
    gender = adv.target_gender.strip().lower()
    if gender not in _GENDERS:
        raise ValueError(f"advertiser {adv.id}: unknown target gender {adv.target_gender!r}")
    return gender


def _female_share(show: ShowFeatures) -> float | None:
    return None if show.female_share is None else _unit(float(show.female_share))


def _trend(show: ShowFeatures) -> float:
    recent, prior = show.recent_downloads, show.prior_downloads
    if recent is None or prior is None or not prior > 0:
        return 0.5
    return _unit(0.5 + 0.5 * (recent - prior) / prior)


def _spot_cost(show: ShowFeatures) -> float | None:
    if show.cpm_usd is None:
        return None
    return show.cpm_usd * show.avg_downloads / 1000


def _window(adv: AdvertiserFeatures) -> tuple[int, int]:
    start = min(max(adv.flight_start_day, 0), HORIZON_DAYS)
    end = min(max(adv.flight_end_day, 0), HORIZON_DAYS)
    return start, end


def _weeks(start: int, end: int) -> int:
    return (end - start + 6) // 7


def _free_slots(show: ShowFeatures, start: int, end: int) -> int:
    # A negative count (an overbooked day) frees nothing on the other days.
    return sum(max(0, int(n)) for n in show.free_mid_slots[start:end])


def _weight_vector(weights: Mapping[str, float]) -> tuple[tuple[float, ...], float]:
    unknown = set(weights) - set(SIGNALS)
    if unknown:
        raise ValueError(f"unknown signal weights: {', '.join(sorted(unknown))}")
    w = tuple(float(weights.get(s, 0.0)) for s in SIGNALS)
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise ValueError("signal weights must be finite and non-negative")
    total = 0.0
    for x in w:
        total += x
    if total <= 0:
        raise ValueError("at least one signal weight must be above 0")
    return w, total


def _geo_share(show: ShowFeatures, adv: AdvertiserFeatures) -> float | None:
    """Share of the audience in the target countries; None when the show has no geo data."""
    geo = _shares(show.geo, _country)
    if not geo:
        return None
    share = 0.0
    for c in _unique(_country(c) for c in adv.target_geo):
        share += geo.get(c, 0.0)
    return _unit(share)


def _age_share(show: ShowFeatures, adv: AdvertiserFeatures) -> float | None:
    age = _shares(show.age, _band)
    if not age:
        return None
    share = 0.0
    for b in _unique(_band(b) for b in adv.target_age):
        share += age.get(b, 0.0)
    return _unit(share)


def _geo_signal(show: ShowFeatures, adv: AdvertiserFeatures) -> float:
    if not adv.target_geo:
        return 1.0
    share = _geo_share(show, adv)
    return 0.5 if share is None else share


def _demographic_signal(show: ShowFeatures, adv: AdvertiserFeatures) -> float:
    if not adv.target_age:
        age = 1.0
    else:
        share = _age_share(show, adv)
        age = 0.5 if share is None else share
    gender = _gender(adv)
    if gender is None:
        return age
    female = _female_share(show)
    if female is None:
        factor = 0.5
    elif gender == "female":
        factor = female
    else:
        factor = 1.0 - female
    return 0.5 * age + 0.5 * factor


def _topic_signal(show: ShowFeatures, adv: AdvertiserFeatures) -> float:
    targets = _unique(_category(c) for c in adv.target_categories)
    if not targets:
        return 1.0
    covered = {_category(c) for c in show.categories}
    return sum(1 for t in targets if t in covered) / len(targets)


def _lift_signal(show: ShowFeatures, past_delivery: float | None) -> float:
    trend = _trend(show)
    if past_delivery is None or math.isnan(past_delivery):
        return trend
    return 0.5 * trend + 0.5 * _unit(past_delivery)


def _inventory_signal(show: ShowFeatures, adv: AdvertiserFeatures) -> float:
    start, end = _window(adv)
    if end <= start:
        slot_fit = 0.0
    else:
        slot_fit = min(1.0, _free_slots(show, start, end) / max(1, _weeks(start, end)))
    spot, budget = _spot_cost(show), adv.budget_usd
    if spot is None or budget is None or spot <= budget:
        price_fit = 1.0
    else:
        price_fit = budget / spot
    return 0.5 * slot_fit + 0.5 * price_fit


def _worst_risk(show: ShowFeatures) -> tuple[str, int] | None:
    """The riskiest GARM category (ties: catalog order, then alphabetical) and its rank."""
    risks = _risks(show)
    if not risks:
        return None
    category = min(risks, key=lambda c: (-risks[c], _GARM_ORDER.get(c, len(_GARM_ORDER)), c))
    return category, risks[category]


def _exclusion(show: ShowFeatures, adv: AdvertiserFeatures) -> str | None:
    tolerance = _tolerance(adv)
    worst = _worst_risk(show)
    if worst is None:
        return None
    category, rank = worst
    if rank >= _FLOOR:
        return f"brand safety: {category} is at the floor"
    if rank > TOLERANCE_RANK[tolerance]:
        return (
            f"brand safety: {category} is {_LEVEL_NAME[rank]}, above this advertiser's {tolerance} tolerance"
        )
    return None


def _brand_safety_signal(show: ShowFeatures) -> float:
    worst = _worst_risk(show)
    max_rank = 0 if worst is None else worst[1]
    return 1.0 - max_rank / 4


def score_pair(
    show: ShowFeatures,
    adv: AdvertiserFeatures,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    past_delivery: float | None = None,
) -> PairScore:
    """Reference scorer; past_delivery = this advertiser's delivered/goal share on this show from past IOs."""
    w, total_weight = _weight_vector(weights)
    signals = {
        "geo": _geo_signal(show, adv),
        "demographic": _demographic_signal(show, adv),
        "topic": _topic_signal(show, adv),
        "lift": _lift_signal(show, past_delivery),
        "inventory": _inventory_signal(show, adv),
        "brand_safety": _brand_safety_signal(show),
    }
    weighted = 0.0
    for name, weight in zip(SIGNALS, w, strict=True):
        weighted += weight * signals[name]
    excluded = _exclusion(show, adv)
    # Clamped because w * 1.0 summed and divided by the sum of w can round one ulp above 100.
    score = 0.0 if excluded is not None else min(100.0, max(0.0, 100.0 * weighted / total_weight))
    return PairScore(score=score, signals=signals, excluded=excluded)


def _pct(x: float) -> str:
    return f"{round(x * 100)}%"


def _money(x: float) -> str:
    return f"${x:,.0f}"


def _geo_phrase(show: ShowFeatures, adv: AdvertiserFeatures) -> str:
    targets = _unique(_country(c) for c in adv.target_geo)
    if not targets:
        return "no geo targeting"
    share = _geo_share(show, adv)
    if share is None:
        return "audience geography unknown"
    if share >= 0.5:
        return f"{_pct(share)} of the audience is in your target countries"
    if share > 0:
        return f"only {_pct(share)} of the audience is in your target countries"
    return f"none of the audience is in your target countries ({', '.join(targets)})"


def _demographic_phrase(show: ShowFeatures, adv: AdvertiserFeatures) -> str:
    parts = []
    bands = _unique(_band(b) for b in adv.target_age)
    if bands:
        share = _age_share(show, adv)
        if share is None:
            parts.append("audience ages unknown")
        elif share >= 0.5:
            age = _shares(show.age, _band)
            order = {b: i for i, b in enumerate(AGE_BANDS)}
            top = min(bands, key=lambda b: (-age.get(b, 0.0), order.get(b, len(order)), b))
            parts.append(f"mostly {top} as targeted")
        else:
            parts.append(f"few listeners in the targeted ages ({_pct(share)} in {', '.join(bands)})")
    gender = _gender(adv)
    if gender is not None:
        female = _female_share(show)
        if female is None:
            parts.append("listener gender unknown")
        else:
            share = female if gender == "female" else 1.0 - female
            lead = "" if share >= 0.5 else "only "
            parts.append(f"{lead}{_pct(share)} {gender} listeners")
    return ", ".join(parts) if parts else "no age or gender targeting"


def _topic_phrase(show: ShowFeatures, adv: AdvertiserFeatures) -> str:
    targets = {_category(c): c.strip() for c in reversed(adv.target_categories)}
    if not targets:
        return "no topic targeting"
    ordered = [targets[k] for k in _unique(_category(c) for c in adv.target_categories)]
    shown = {_category(c): c.strip() for c in reversed(show.categories)}
    covered = [shown[_category(t)] for t in ordered if _category(t) in shown]
    missing = [t for t in ordered if _category(t) not in shown]
    if not covered:
        return f"no overlap with the targeted categories ({', '.join(missing)})"
    phrase = f"covers {', '.join(covered)} as targeted"
    return f"{phrase} (not {', '.join(missing)})" if missing else phrase


def _lift_phrase(show: ShowFeatures, lift: float) -> str:
    recent, prior = show.recent_downloads, show.prior_downloads
    if recent is None or prior is None or not prior > 0:
        trend_phrase = "no download trend yet"
    else:
        change = abs(recent - prior) / prior * 100
        if recent >= 10 * prior:
            trend_phrase = "downloads up tenfold or more over the last 28 days"
        elif round(change) == 0:
            trend_phrase = "downloads flat over the last 28 days"
        else:
            direction = "up" if recent > prior else "down"
            trend_phrase = f"downloads {direction} {round(change)}% over the last 28 days"
    trend = _trend(show)
    # A PairScore carries only the blended lift; past delivery is recovered from it.
    if abs(lift - trend) <= 1e-9:
        return trend_phrase
    delivered = _unit(2.0 * lift - trend)
    return f"delivered {_pct(delivered)} of goal on your past IOs, {trend_phrase}"


def _inventory_phrase(show: ShowFeatures, adv: AdvertiserFeatures) -> str:
    start, end = _window(adv)
    if end <= start:
        slots = "no bookable days left in your flight window"
    else:
        free = _free_slots(show, start, end)
        if free == 0:
            when = (
                f"before {adv.flight_end_date.isoformat()}"
                if adv.flight_end_date
                else "in your flight window"
            )
            slots = f"no free mid-roll slot {when}"
        else:
            slots = f"{free} free mid-roll slot{'s' if free != 1 else ''} in your flight window"
    spot, budget = _spot_cost(show), adv.budget_usd
    if spot is None or budget is None:
        return slots
    if spot > budget:
        return f"{slots}, a mid-roll costs about {_money(spot)}, over your {_money(budget)} budget"
    return f"{slots}, a mid-roll costs about {_money(spot)}, within your {_money(budget)} budget"


def _brand_safety_phrase(show: ShowFeatures, adv: AdvertiserFeatures) -> str:
    tolerance = _tolerance(adv)
    worst = _worst_risk(show)
    if worst is None:
        return f"brand-safe at {tolerance} tolerance"
    category, rank = worst
    return f"highest GARM risk: {category} at {_LEVEL_NAME[rank]}, within your {tolerance} tolerance"


def rationale(
    show: ShowFeatures,
    adv: AdvertiserFeatures,
    pair: PairScore,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
) -> str:
    """Plain words naming the two strongest signals and the weakest; an exclusion reason comes first.

    Strongest means the largest weighted contribution (weight x signal), signals the advertiser
    does not target coming last; weakest means the largest weighted shortfall (weight x
    (1 - signal)), so the words explain what moved the score. Pass the tenant's weights.
    """
    w, _ = _weight_vector(weights)
    weight = dict(zip(SIGNALS, w, strict=True))
    s = pair.signals
    candidates = [name for name in SIGNALS if pair.excluded is None or name != "brand_safety"]
    position = {name: i for i, name in enumerate(SIGNALS)}
    # An untargeted signal is a neutral 1.0: it says little, so targeted signals are named first.
    untargeted = {
        "geo": not adv.target_geo,
        "demographic": not adv.target_age and adv.target_gender is None,
        "topic": not _unique(_category(c) for c in adv.target_categories),
    }
    strongest = sorted(
        candidates,
        key=lambda n: (untargeted.get(n, False), -weight[n] * s[n], -s[n], position[n]),
    )[:2]
    rest = [n for n in candidates if n not in strongest]
    weakest = min(rest, key=lambda n: (-weight[n] * (1.0 - s[n]), s[n], position[n]))
    phrase: dict[str, Callable[[], str]] = {
        "geo": lambda: _geo_phrase(show, adv),
        "demographic": lambda: _demographic_phrase(show, adv),
        "topic": lambda: _topic_phrase(show, adv),
        "lift": lambda: _lift_phrase(show, s["lift"]),
        "inventory": lambda: _inventory_phrase(show, adv),
        "brand_safety": lambda: _brand_safety_phrase(show, adv),
    }
    parts = [phrase[n]() for n in (*strongest, weakest)]
    if pair.excluded is not None:
        parts.insert(0, pair.excluded)
    return "; ".join(parts)


def explain(
    show: ShowFeatures,
    adv: AdvertiserFeatures,
    weights: Mapping[str, float],
    *,
    free_slots: int,
    past_delivery: float | None = None,
) -> str:
    """The rationale of a ranked pair rebuilt from the facts its ranking kept (see `rationale`).

    A recalculation stores, per pair, what changes without the show or the advertiser changing:
    the free mid-roll slots in the flight window, the past delivery share, the download trend (in
    `show`) and the weights. The pair is scored again with the reference scorer and worded by
    `rationale`, so the words are those of the ranking, built only for the pairs a reader asks for.
    """
    start, end = _window(adv)
    slots = [0] * HORIZON_DAYS
    if end > start:
        slots[start] = max(0, int(free_slots))
    show = dataclasses.replace(show, free_mid_slots=tuple(slots))
    return rationale(show, adv, score_pair(show, adv, weights, past_delivery), weights)


def flight_windows(advertisers: Sequence[AdvertiserFeatures]) -> Int64Array:
    """(n_advertisers, 2): each advertiser's bookable window [start, end) in days from today."""
    return np.array([_window(a) for a in advertisers], dtype=np.int64).reshape(len(advertisers), 2)


def free_slots_in_window(
    shows: ShowMatrix, windows: Int64Array, show_idx: npt.ArrayLike, adv_idx: npt.ArrayLike
) -> Int64Array:
    """Free mid-roll slots of show_idx[k] in the window of advertiser adv_idx[k] (0 if empty)."""
    i = np.asarray(show_idx, dtype=np.intp)
    w = windows[np.asarray(adv_idx, dtype=np.intp)]
    free = shows.free_cum[i, w[:, 1]] - shows.free_cum[i, w[:, 0]]
    return np.where(w[:, 1] > w[:, 0], free, 0)


@dataclass
class BatchResult:
    """Scores, signals and exclusion flags of every show against a chunk of advertisers."""

    scores: Float64Array
    signals: Float64Array
    excluded: BoolArray

    def masked_scores(self) -> Float64Array:
        """Scores with excluded pairs at -inf: what to hand to `top_k`."""
        return np.where(self.excluded, -np.inf, self.scores)


@dataclass(frozen=True, eq=False)
class ShowMatrix:
    """Every show's features as arrays, built once per recalculation and shared by all chunks.

    Rows are shows in input order. geo (n_shows, countries), age (n_shows, age_bands) and topics
    (n_shows, categories, multi-hot) are columns over the vocabularies; risk is the GARM rank
    0..4 per (show, garm_category); female_share, cpm_usd and spot_cost are NaN when unknown;
    free_cum[i, d] is the number of free mid-roll slots of show i on days [0, d).
    """

    ids: tuple[str, ...]
    countries: tuple[str, ...]
    age_bands: tuple[str, ...]
    categories: tuple[str, ...]
    garm_categories: tuple[str, ...]
    geo: Float64Array
    has_geo: BoolArray
    age: Float64Array
    has_age: BoolArray
    female_share: Float64Array
    topics: Float64Array
    risk: npt.NDArray[np.int8]
    max_risk: Int64Array
    floor: BoolArray
    trend: Float64Array
    cpm_usd: Float64Array
    downloads: Float64Array
    spot_cost: Float64Array
    free_cum: Int64Array

    @property
    def n_shows(self) -> int:
        """How many shows the matrix holds."""
        return len(self.ids)

    @classmethod
    def build(
        cls,
        shows: Sequence[ShowFeatures],
        country_vocab: Sequence[str] | None = None,
        category_vocab: Sequence[str] | None = None,
    ) -> ShowMatrix:
        """Builds the arrays; keys seen in shows but missing from a given vocabulary are appended to it."""
        geos = [_shares(s.geo, _country) for s in shows]
        ages = [_shares(s.age, _band) for s in shows]
        cats = [{_category(c) for c in s.categories} for s in shows]
        risks = [_risks(s) for s in shows]
        countries = _vocab(country_vocab, _country, (k for g in geos for k in g))
        bands = _vocab(AGE_BANDS, _band, (k for a in ages for k in a))
        categories = _vocab(category_vocab, _category, (c for cs in cats for c in cs))
        garm = _vocab(GARM_CATEGORIES, _category, (c for r in risks for c in r))
        n = len(shows)
        geo = _dense(geos, countries)
        age = _dense(ages, bands)
        topics = _dense([dict.fromkeys(cs, 1.0) for cs in cats], categories)
        risk = np.zeros((n, len(garm)), dtype=np.int8)
        garm_index = {c: j for j, c in enumerate(garm)}
        for i, r in enumerate(risks):
            for c, rank in r.items():
                risk[i, garm_index[c]] = rank
        max_risk = risk.max(axis=1, initial=0).astype(np.int64)
        free = np.zeros((n, HORIZON_DAYS + 1), dtype=np.int64)
        for i, s in enumerate(shows):
            days = s.free_mid_slots[:HORIZON_DAYS]
            free[i, 1 : len(days) + 1] = days
        np.maximum(free, 0, out=free)
        np.cumsum(free, axis=1, out=free)
        return cls(
            ids=tuple(s.id for s in shows),
            countries=countries,
            age_bands=bands,
            categories=categories,
            garm_categories=garm,
            geo=geo,
            has_geo=np.array([bool(g) for g in geos], dtype=np.bool_),
            age=age,
            has_age=np.array([bool(a) for a in ages], dtype=np.bool_),
            female_share=_floats(_female_share(s) for s in shows),
            topics=topics,
            risk=risk,
            max_risk=max_risk,
            floor=max_risk >= _FLOOR,
            trend=_floats(_trend(s) for s in shows),
            cpm_usd=_floats(s.cpm_usd for s in shows),
            downloads=_floats(float(s.avg_downloads) for s in shows),
            spot_cost=_floats(_spot_cost(s) for s in shows),
            free_cum=free,
        )


def _vocab(given: Iterable[str] | None, key: Callable[[str], str], seen: Iterable[str]) -> tuple[str, ...]:
    base = _unique(key(v) for v in given or ())
    known = set(base)
    return base + tuple(sorted({v for v in seen if v not in known}))


def _dense(rows: Sequence[Mapping[str, float]], vocab: Sequence[str]) -> Float64Array:
    index = {v: j for j, v in enumerate(vocab)}
    out = np.zeros((len(rows), len(vocab)), dtype=np.float64)
    for i, row in enumerate(rows):
        for k, value in row.items():
            out[i, index[k]] = value
    return out


def _floats(values: Iterable[float | None]) -> Float64Array:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _target_mask(
    targets: Sequence[Iterable[str]], key: Callable[[str], str], vocab: Sequence[str]
) -> Float64Array:
    """(len(vocab), n_advertisers) 0/1; targets outside the vocabulary match nothing."""
    index = {v: j for j, v in enumerate(vocab)}
    mask = np.zeros((len(vocab), len(targets)), dtype=np.float64)
    for col, ts in enumerate(targets):
        for t in ts:
            row = index.get(key(t))
            if row is not None:
                mask[row, col] = 1.0
    return mask


def score_batch(
    shows: ShowMatrix,
    advertisers: Sequence[AdvertiserFeatures],
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    past_delivery: Mapping[tuple[int, int], float] | None = None,
) -> BatchResult:
    """Scores every show against each advertiser; past_delivery keys are (show index, advertiser index)."""
    w, total_weight = _weight_vector(weights)
    n, m = shows.n_shows, len(advertisers)
    shape = (n, m)

    geo_targeted = np.array([bool(a.target_geo) for a in advertisers], dtype=np.bool_)
    geo_share = np.clip(
        shows.geo @ _target_mask([a.target_geo for a in advertisers], _country, shows.countries), 0.0, 1.0
    )
    geo = np.where(geo_targeted, np.where(shows.has_geo[:, None], geo_share, 0.5), 1.0)

    age_targeted = np.array([bool(a.target_age) for a in advertisers], dtype=np.bool_)
    age_share = np.clip(
        shows.age @ _target_mask([a.target_age for a in advertisers], _band, shows.age_bands), 0.0, 1.0
    )
    age = np.where(age_targeted, np.where(shows.has_age[:, None], age_share, 0.5), 1.0)
    genders = [_gender(a) for a in advertisers]
    female = shows.female_share[:, None]
    known = ~np.isnan(female)
    factor_female = np.where(known, female, 0.5)
    factor_male = np.where(known, 1.0 - female, 0.5)
    is_female = np.array([g == "female" for g in genders], dtype=np.bool_)
    gendered = np.array([g is not None for g in genders], dtype=np.bool_)
    gender = np.where(is_female, factor_female, factor_male)
    demographic = np.where(gendered, 0.5 * age + 0.5 * gender, age)

    topic_targets = [_unique(_category(c) for c in a.target_categories) for a in advertisers]
    n_topics = np.array([len(t) for t in topic_targets], dtype=np.float64)
    covered = shows.topics @ _target_mask(topic_targets, _category, shows.categories)
    topic = np.where(n_topics > 0, covered / np.maximum(n_topics, 1.0), 1.0)

    past = np.full(shape, np.nan)
    for (i, j), share in (past_delivery or {}).items():
        if not (0 <= i < n and 0 <= j < m):
            raise ValueError(f"past_delivery key {(i, j)} is outside {n} shows x {m} advertisers")
        past[i, j] = share
    trend = shows.trend[:, None]
    lift = np.where(np.isnan(past), trend, 0.5 * trend + 0.5 * np.clip(past, 0.0, 1.0))

    windows = flight_windows(advertisers)
    start, end = windows[:, 0], windows[:, 1]
    free = shows.free_cum[:, end] - shows.free_cum[:, start]
    weeks = np.maximum(1, (end - start + 6) // 7)
    slot_fit = np.where(end > start, np.minimum(1.0, free / weeks), 0.0)
    budget = _floats(a.budget_usd for a in advertisers)[None, :]
    spot = shows.spot_cost[:, None]
    # NaN (unknown budget or CPM) compares False, leaving price_fit at 1.
    over = spot > budget
    price_fit = np.ones(shape)
    np.divide(budget, spot, out=price_fit, where=over)
    inventory = 0.5 * slot_fit + 0.5 * price_fit

    tolerance = np.array([TOLERANCE_RANK[_tolerance(a)] for a in advertisers], dtype=np.int64)
    brand_safety = 1.0 - shows.max_risk.astype(np.float64) / 4
    excluded = shows.floor[:, None] | (shows.max_risk[:, None] > tolerance[None, :])

    signals = np.empty((len(SIGNALS), n, m), dtype=np.float64)
    signals[0] = geo
    signals[1] = demographic
    signals[2] = topic
    signals[3] = lift
    signals[4] = inventory
    signals[5] = brand_safety[:, None]
    # Same order of additions as score_pair, so both round the same way.
    weighted = np.zeros(shape)
    for k, weight in enumerate(w):
        weighted += weight * signals[k]
    scores = np.clip(100.0 * weighted / total_weight, 0.0, 100.0)
    scores[excluded] = 0.0
    return BatchResult(scores=scores, signals=signals, excluded=excluded)


def top_k(values: npt.ArrayLike, k: int, axis: int) -> npt.NDArray[np.intp]:
    """Indices of the k largest values along axis, largest first, ties to the lower index.

    It ranks what it is given and knows nothing of exclusions: callers rank
    `BatchResult.masked_scores()` (excluded pairs at -inf) and drop any returned index whose masked
    score is -inf, which only happens when fewer than k pairs are eligible. NaN ranks as -inf;
    k above the axis length returns the whole axis.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    arr = np.asarray(values, dtype=np.float64)
    moved = np.moveaxis(arr, axis, -1)
    n = moved.shape[-1]
    k = min(k, n)
    flat = moved.reshape(-1, n)
    flat = np.where(np.isnan(flat), -np.inf, flat)
    rows = flat.shape[0]
    if k == 0:
        idx = np.empty((rows, 0), dtype=np.intp)
    elif k == n:
        idx = np.argsort(-flat, axis=1, kind="stable")
    else:
        # Select in linear time around the k-th largest value, then sort only the k kept.
        kth = np.partition(flat, n - k, axis=1)[:, n - k : n - k + 1]
        above = flat > kth
        tied = flat == kth
        needed = k - above.sum(axis=1, keepdims=True)
        keep = above | (tied & (np.cumsum(tied, axis=1) <= needed))
        cols = np.nonzero(keep)[1].reshape(rows, k)
        order = np.argsort(-np.take_along_axis(flat, cols, axis=1), axis=1, kind="stable")
        idx = np.take_along_axis(cols, order, axis=1)
    return np.moveaxis(idx.reshape(*moved.shape[:-1], k), -1, axis)
