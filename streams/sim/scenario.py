"""Scenarios for the simulator: a mining world and its scripted shocks, parsed from YAML.

A scenario states what the world looks like at its start (network hashrate, each region's share in
percent, the pools with their share of the network and, for sampled pools, where their hashers
are, the machine fleet) and what happens to it (shocks). Every check names the field it rejects
(``pools[2].mix``, ``shocks[0].over``) so a scenario author can fix the file without reading code.

Times inside a scenario are offsets from its start: seconds, or strings such as ``90s``, ``15m``,
``6h``, ``2d``, ``1w``. Shares are percent, as CCAF publishes them; the model turns them into
fractions.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from streams.core.blocks import pool_slug
from streams.core.regions import country_of, normalise_region

PERCENT_TOLERANCE = 0.05
#: Longest step: a share batch must fit the pipeline's fine buckets (3820 s by default) with room.
MAX_STEP_S = 600.0
#: "Within minutes": the longest fall a blackout may take.
MAX_BLACKOUT_FALL_S = 3600.0

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_FIELD_PREFIX = re.compile(r"^([A-Za-z0-9_.\[\]-]+): (.*)$", re.DOTALL)


class ScenarioError(ValueError):
    """A scenario that cannot be used; ``field`` is the path to the culprit (``pools[1].mix``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def parse_duration(value: object) -> object:
    """Seconds from a number or a string like '90s', '15m', '6h', '2d', '1w'."""
    if isinstance(value, bool):
        raise ValueError("must be seconds or a duration like '15m', '6h', '2d'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration like '90s', '15m', '6h', '2d', '1w'")
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, allow_inf_nan=False)]
PositiveDuration = Annotated[
    float, BeforeValidator(parse_duration), Field(gt=0, allow_inf_nan=False)
]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]


def _region_map(values: object, what: str) -> object:
    """Normalise the region codes of a {region: percent} map; an error names the bad key."""
    if not isinstance(values, dict):
        return values
    out: dict[str, object] = {}
    for key, share in values.items():
        try:
            code = normalise_region(str(key))
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
        if code in out:
            raise ValueError(f"{key}: {what} lists region {code} twice")
        out[code] = share
    return out


def _check_percent_sum(values: dict[str, float], what: str) -> None:
    total = sum(values.values())
    if abs(total - 100.0) > PERCENT_TOLERANCE:
        raise ValueError(f"{what} must add up to 100 %, they add up to {total:.4g} %")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkSpec(_Spec):
    """Network hashrate at the start, its trend, and the wander of each region around it."""

    hashrate_ehs: float = Field(gt=0, allow_inf_nan=False)
    growth_per_day: float = Field(default=0.0, ge=-0.5, le=0.5, allow_inf_nan=False)
    #: Log-normal AR(1) wander of each region's hashrate (farms switching on and off), 1 sigma.
    noise_sigma: float = Field(default=0.0, ge=0, le=0.5, allow_inf_nan=False)
    noise_correlation: PositiveDuration = 1800.0


class ChainSpec(_Spec):
    """The chain the blocks continue: first height, difficulty, retargeting and fees."""

    start_height: int = Field(default=717_000, ge=1)
    #: Network difficulty at the start; default: the one that gives 600 s blocks at the start.
    difficulty: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    #: Retarget every 2016 blocks as Bitcoin does; false keeps the difficulty fixed.
    retarget: bool = True
    fees_btc_mean: float = Field(default=0.1, ge=0, le=100, allow_inf_nan=False)
    #: Blocks before the start sent first (a feed starts with the chain's recent past).
    history_blocks: int = Field(default=0, ge=0, le=4032)

    @model_validator(mode="after")
    def _history_fits(self) -> ChainSpec:
        if self.history_blocks >= self.start_height:
            raise ValueError("history_blocks: must be below start_height")
        return self


class MarketSpec(_Spec):
    """BTC/USD as a geometric random walk, observed every ``interval``."""

    btc_usd: float = Field(gt=0, allow_inf_nan=False)
    volatility_per_day: float = Field(default=0.03, ge=0, le=1, allow_inf_nan=False)
    interval: PositiveDuration = 60.0


class MachineSpec(_Spec):
    """One machine model: its hash rate (or range) and its part of the fleet's hashrate."""

    model: str = Field(min_length=1)
    hashrate_ths: tuple[float, float]
    share_pct: Percent

    @field_validator("hashrate_ths", mode="before")
    @classmethod
    def _range(cls, value: object) -> object:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (value, value)
        return value

    @model_validator(mode="after")
    def _ordered(self) -> MachineSpec:
        low, high = self.hashrate_ths
        if not (0 < low <= high and math.isfinite(high)):
            raise ValueError("hashrate_ths: must be a positive rate or a range [low, high]")
        return self


class PoolSpec(_Spec):
    """A mining pool: its share of network hashrate and, when sampled, its hashers' geography."""

    name: str = Field(min_length=1, max_length=64)
    network_share_pct: float = Field(gt=0, le=100, allow_inf_nan=False)
    #: True when the pool's shares reach the pipeline (a proxy in front of it reports them).
    sampled: bool = False
    #: Vardiff target: seconds between shares per worker (pools aim at roughly 5–20 s).
    share_interval: PositiveDuration = 10.0
    #: Percent of the pool's hashrate per region (leaf or country); default: the network's mix.
    mix: dict[str, Percent] | None = None
    #: How late the pool's share batches reach the pipeline (a slow proxy or feed): a batch is
    #: emitted this long after it ends. 0: as soon as it ends.
    feed_lag: Duration = 0.0

    @field_validator("name")
    @classmethod
    def _sluggable(cls, name: str) -> str:
        pool_slug(name)
        return name

    @field_validator("share_interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if not 1.0 <= value <= 120.0:
            raise ValueError("must be between 1 s and 120 s")
        return value

    @field_validator("mix", mode="before")
    @classmethod
    def _mix_regions(cls, value: object) -> object:
        return _region_map(value, "mix")

    @field_validator("mix")
    @classmethod
    def _mix_total(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            _check_percent_sum(value, "mix shares")
        return value

    @property
    def slug(self) -> str:
        return pool_slug(self.name)


ShockKind = Literal["ramp", "blackout", "curtailment", "vpn", "switch"]


class ShockSpec(_Spec):
    """A scripted change of one region (a leaf, or a country and all its leaves), or of some pools.

    ``ramp``: hashrate moves to ``factor`` × its level over ``over`` and stays (up or down).
    ``blackout``: drops to ``factor`` within minutes (``over`` ≤ 1 h); with ``hold`` it comes back
    over ``recovery`` after that long. ``curtailment``: drops over ``over``, stays ``hold``, comes
    back over ``recovery``. ``vpn``: nothing changes in truth; in the sample, ``fraction`` of the
    region's shares appear in ``exit_region`` (reached over ``over``; ends after ``hold``).

    With ``pools`` the shock hits only the hashers of those pools (in ``region``, or in every
    region when ``region`` is left out): ``ramp``/``blackout``/``curtailment`` change their
    hashrate (the network loses or gains it). ``switch`` (needs ``pools``) moves the part
    1 − ``factor`` of their hashers to ``to_pools`` (default: every unsampled pool not in
    ``pools`` and the unidentified rest, in proportion to their shares) over ``over``: the
    network keeps its hashrate and every region its share; only the pools' coverage moves.
    """

    name: str = Field(min_length=1, max_length=64)
    kind: ShockKind
    region: str | None = None
    at: Duration
    over: Duration | None = None
    factor: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    hold: Duration | None = None
    recovery: Duration | None = None
    exit_region: str | None = None
    fraction: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    #: Pool names whose hashers alone the shock hits (see the class docstring).
    pools: list[str] | None = Field(default=None, min_length=1)
    #: For ``switch``: the pools the hashers move to.
    to_pools: list[str] | None = Field(default=None, min_length=1)

    @field_validator("region", "exit_region", mode="before")
    @classmethod
    def _code(cls, value: object) -> object:
        if isinstance(value, str):
            return normalise_region(value)
        return value

    @model_validator(mode="after")
    def _per_kind(self) -> ShockSpec:
        if self.region is None and self.pools is None:
            raise ValueError("region: required unless the shock names its pools")
        if self.to_pools is not None and self.kind != "switch":
            raise ValueError("to_pools: only a switch shock takes to_pools")
        if self.kind == "switch":
            if self.pools is None:
                raise ValueError("pools: required for a switch shock (whose hashers move)")
            if self.factor is None or self.factor >= 1:
                raise ValueError("factor: a switch keeps factor < 1 of the pools' hashers")
            if self.exit_region is not None or self.fraction is not None:
                raise ValueError("exit_region: only a vpn shock takes exit_region")
            return self
        if self.kind == "vpn":
            if self.pools is not None:
                raise ValueError("pools: a vpn shock moves a region's shares, not pools'")
            if self.exit_region is None:
                raise ValueError("exit_region: required for a vpn shock")
            if self.fraction is None:
                raise ValueError("fraction: required for a vpn shock")
            if self.factor is not None:
                raise ValueError("factor: a vpn shock changes no hashrate, use fraction")
            if self.exit_region == self.region:
                raise ValueError("exit_region: must differ from region")
            return self
        for name in ("exit_region", "fraction"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name}: only a vpn shock takes {name}")
        if self.factor is None:
            raise ValueError(f"factor: required for a {self.kind} shock")
        if self.kind == "ramp":
            if self.over is None:
                raise ValueError("over: required for a ramp (how long the change takes)")
            if self.hold is not None or self.recovery is not None:
                raise ValueError("hold: a ramp stays; use curtailment for a temporary change")
        if self.kind == "blackout":
            if self.factor >= 1:
                raise ValueError("factor: a blackout must lower hashrate (factor < 1)")
            if self.over is not None and self.over > MAX_BLACKOUT_FALL_S:
                raise ValueError(
                    f"over: a blackout falls within minutes (at most {MAX_BLACKOUT_FALL_S:g} s); "
                    "use a ramp or curtailment for slower drops"
                )
        if self.kind == "curtailment":
            if self.factor >= 1:
                raise ValueError("factor: a curtailment must lower hashrate (factor < 1)")
            if self.hold is None:
                raise ValueError("hold: required for a curtailment (how long it lasts)")
        return self

    @property
    def fall_s(self) -> float:
        """Time from onset to full effect (defaults: blackout 10 min, curtailment 1 h, vpn 0)."""
        if self.over is not None:
            return self.over
        return {"ramp": 0.0, "blackout": 600.0, "curtailment": 3600.0, "vpn": 0.0,
                "switch": 0.0}[self.kind]

    @property
    def recovery_s(self) -> float | None:
        """Time to undo the effect after ``hold``; None when the effect stays."""
        if self.hold is None:
            return None
        return self.recovery if self.recovery is not None else max(self.fall_s, 600.0)

    @property
    def direction(self) -> Literal["up", "down", "vpn", "switch"]:
        if self.kind in ("vpn", "switch"):
            return self.kind
        return "up" if (self.factor or 0.0) > 1.0 else "down"


class FarmsSpec(_Spec):
    """Regions made of farms instead of a smooth mass of hashers.

    Each listed region (leaf, or a country's leaves) is split into ``count`` farms with
    log-normal sizes (``sigma`` of the log); each farm mines at one pool, drawn in proportion to
    the part of the region each pool holds under the pool rules, so the pools' regional mixes
    are right only on average. A farm switches pool ``switches_per_day`` times a day on average
    (a new pool drawn the same way). Farms are drawn from the run's seed.
    """

    regions: list[str] = Field(min_length=1)
    count: int = Field(ge=1, le=100_000)
    sigma: float = Field(default=1.0, ge=0, le=5, allow_inf_nan=False)
    switches_per_day: float = Field(default=0.0, ge=0, le=24, allow_inf_nan=False)

    @field_validator("regions", mode="before")
    @classmethod
    def _codes(cls, value: object) -> object:
        if isinstance(value, list):
            return [normalise_region(str(v)) for v in value]
        return value


class EvaluationSpec(_Spec):
    """When the offline evaluator (``hashatlas evaluate --scenario``) checks the estimates."""

    #: Offsets from the start at which each world's snapshot is compared with the truth.
    checks: list[Duration] = Field(min_length=1, max_length=64)


class Scenario(_Spec):
    """A whole scenario; see scenarios/*.yaml for commented examples."""

    name: str = Field(min_length=1)
    description: str = ""
    duration: PositiveDuration
    #: Model step: hashrate is constant within a step and each sampled (pool, region) reports one
    #: share batch per step, as a busy proxy would.
    step_s: PositiveDuration = 10.0
    seed: int = 1
    single_share_fraction: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    network: NetworkSpec
    chain: ChainSpec = ChainSpec()
    market: MarketSpec
    regions: dict[str, Percent]
    machines: list[MachineSpec] = Field(min_length=1)
    pools: list[PoolSpec] = Field(min_length=1)
    shocks: list[ShockSpec] = Field(default_factory=list)
    farms: FarmsSpec | None = None
    evaluation: EvaluationSpec | None = None

    @field_validator("step_s")
    @classmethod
    def _step(cls, value: float) -> float:
        if not 1.0 <= value <= MAX_STEP_S:
            raise ValueError(f"must be between 1 s and {MAX_STEP_S:g} s")
        return value

    @field_validator("regions", mode="before")
    @classmethod
    def _region_codes(cls, value: object) -> object:
        return _region_map(value, "regions")

    @field_validator("regions")
    @classmethod
    def _regions_total(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("at least one region is needed")
        _check_percent_sum(value, "region shares")
        return value

    @field_validator("machines")
    @classmethod
    def _fleet_total(cls, value: list[MachineSpec]) -> list[MachineSpec]:
        total = sum(m.share_pct for m in value)
        if abs(total - 100.0) > PERCENT_TOLERANCE:
            raise ValueError(f"machine share_pct must add up to 100 %, they add up to {total:.4g}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        self._check_pools()
        self._check_shocks()
        if self.farms is not None:
            for index, code in enumerate(self.farms.regions):
                if not self.leaves_of(code):
                    raise ValueError(f"farms.regions[{index}]: {code} is not among the "
                                     "scenario's regions")
        if self.evaluation is not None:
            for index, check in enumerate(self.evaluation.checks):
                if not 0 < check <= self.duration:
                    raise ValueError(f"evaluation.checks[{index}]: must lie in (0, duration]")
        return self

    def _check_pools(self) -> None:
        slugs: dict[str, int] = {}
        for index, pool in enumerate(self.pools):
            if pool.slug in slugs:
                raise ValueError(
                    f"pools[{index}].name: {pool.name!r} has the same id ({pool.slug}) as "
                    f"pools[{slugs[pool.slug]}]"
                )
            slugs[pool.slug] = index
            if pool.mix is not None and not pool.sampled:
                raise ValueError(
                    f"pools[{index}].mix: only sampled pools take a mix (the others share what "
                    "the sampled pools leave of each region)"
                )
            if pool.mix is not None:
                for code in pool.mix:
                    if not self.leaves_of(code):
                        raise ValueError(
                            f"pools[{index}].mix.{code}: not among the scenario's regions"
                        )
        total = sum(p.network_share_pct for p in self.pools)
        if total > 100.0 + PERCENT_TOLERANCE:
            raise ValueError(f"pools: network_share_pct adds up to {total:.4g} % (over 100 %)")
        if not any(p.sampled for p in self.pools):
            raise ValueError("pools: at least one pool must be sampled (sampled: true)")
        # What the sampled pools hold of each region must fit in it.
        held = dict.fromkeys(self.regions, 0.0)
        for pool in self.pools:
            if pool.sampled:
                for leaf, fraction in self.pool_mix(pool).items():
                    held[leaf] += pool.network_share_pct * fraction
        for leaf, amount in held.items():
            if amount > self.regions[leaf] * (1 + 1e-9) + 1e-9:
                culprit = next(
                    i for i, p in enumerate(self.pools)
                    if p.sampled and p.mix is not None and leaf in self.pool_mix(p)
                )
                raise ValueError(
                    f"pools[{culprit}].mix: sampled pools would hold {amount:.3g} % of the "
                    f"network in {leaf}, which only has {self.regions[leaf]:.3g} %"
                )

    def _check_shocks(self) -> None:
        names: set[str] = set()
        for index, shock in enumerate(self.shocks):
            if shock.name in names:
                raise ValueError(f"shocks[{index}].name: {shock.name!r} is used twice")
            names.add(shock.name)
            known = {p.name for p in self.pools}
            for attr in ("pools", "to_pools"):
                for name in getattr(shock, attr) or []:
                    if name not in known:
                        raise ValueError(f"shocks[{index}].{attr}: {name!r} is not among the "
                                         "scenario's pools")
            if shock.region is None:
                continue
            if not self.leaves_of(shock.region):
                raise ValueError(
                    f"shocks[{index}].region: {shock.region} is not among the scenario's regions"
                )
            if shock.exit_region is not None and shock.exit_region in self.leaves_of(
                shock.region
            ):
                raise ValueError(
                    f"shocks[{index}].exit_region: {shock.exit_region} lies inside "
                    f"{shock.region}"
                )

    def leaves_of(self, code: str) -> list[str]:
        """The scenario's regions that make up ``code``: itself, or a country's leaves."""
        if code in self.regions and "-" in code:
            return [code]
        return [leaf for leaf in self.regions if leaf == code or country_of(leaf) == code]

    def pool_mix(self, pool: PoolSpec) -> dict[str, float]:
        """The pool's hashrate per leaf region as fractions (a country's part spread over its
        leaves in proportion to their network shares); {} for the network's own mix."""
        if pool.mix is None:
            return {}
        out: dict[str, float] = {}
        for code, percent in pool.mix.items():
            leaves = self.leaves_of(code)
            weight = sum(self.regions[leaf] for leaf in leaves)
            for leaf in leaves:
                part = self.regions[leaf] / weight if weight > 0 else 1.0 / len(leaves)
                out[leaf] = out.get(leaf, 0.0) + percent / 100.0 * part
        return out


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _error_field(error: dict[str, Any]) -> tuple[str, str]:
    """Field path and reason of one pydantic error, with any 'field: ' prefix of the message."""
    loc = tuple(p for p in error.get("loc", ()) if isinstance(p, int | str))
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    field = _location(loc)
    match = _FIELD_PREFIX.match(message)
    if match is not None:
        inner, message = match.group(1), match.group(2)
        if inner.startswith("["):
            field = f"{field}{inner}"
        else:
            field = f"{field}.{inner}" if field else inner
    return field or "$", message


class _ScenarioLoader(yaml.SafeLoader):
    """YAML 1.1 reads NO, YES, ON, OFF as booleans, so Norway's code would become False: here only
    true/false are booleans."""


_ScenarioLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ScenarioLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_scenario(text: str) -> Scenario:
    """A validated scenario from YAML text; ScenarioError names the first bad field."""
    try:
        data = yaml.load(text, Loader=_ScenarioLoader)  # a SafeLoader subclass: no objects
    except yaml.YAMLError as exc:
        raise ScenarioError("$", f"not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ScenarioError("$", "a scenario must be a YAML mapping")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(*_error_field(dict(exc.errors()[0]))) from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and parse a scenario file."""
    return parse_scenario(Path(path).read_text(encoding="utf-8"))
