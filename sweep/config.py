"""The sweep config (YAML), validated by pydantic with one-line errors that name the key.

>>> cfg = SweepConfig.model_validate({"name": "x", "model": "m:f", "example_inputs": "m:g"})
>>> cfg.sampler, cfg.n_trials
('tpe', 30)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError

METRICS = (
    "latency_ms", "latency_p90_ms", "size_bytes", "compressed_size_bytes", "accuracy",
    "accuracy_drop", "speedup", "compression_ratio", "peak_memory_bytes", "total_params",
)
CONSTRAINT_KEYS = {
    "max_accuracy_drop": ("accuracy_drop", "max"),
    "min_accuracy": ("accuracy", "min"),
    "max_latency_ms": ("latency_ms", "max"),
    "max_size_bytes": ("size_bytes", "max"),
    "min_speedup": ("speedup", "min"),
    "min_compression_ratio": ("compression_ratio", "min"),
}
OUT_SCHEMES = ("s3", "gs", "hdfs", "abfs", "abfss")
SECRET_QUERY = re.compile(  # KEY=VALUE where KEY looks like a secret: X-Amz-Signature, sig, account_key...
    r"(?<![\w.-])((?:[\w.-]*(?:pass|pwd|secret|token|credential|signature|key|auth|jwt|bearer|session)[\w.-]*"
    r"|sig|sas)=)[^&\s#'\"]+", re.I)
_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _known_keys(v: dict[str, Any], allowed: Any, what: str) -> Any:
    for k in v:
        if k not in allowed:
            raise ValueError(f"unknown {what} {k!r}; allowed: {', '.join(allowed)}")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """A float range for ``pruning_amount``: ``{low, high, step}``."""

    low: float = Field(ge=0.0, lt=1.0)
    high: float = Field(ge=0.0, lt=1.0)
    step: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        return self


class SearchSpace(_Strict):
    """One entry per dimension: a list of choices (or a range for ``pruning_amount``).

    The allowed values of every list come from the technique registry
    (:data:`optimizers.techniques.REGISTRY`); registering a technique adds its name here.
    """

    pruning_method: list[str] = ["none"]
    pruning_amount: Range | list[float] = Range(low=0.1, high=0.5, step=0.1)
    quantization_type: list[str] = ["none"]
    quantization_bits: list[int] = [8]
    quantization_backend: list[str] = ["auto"]
    precision: list[str] = ["fp32"]
    compile: list[bool] = [False]

    @field_validator("pruning_method", "quantization_type", "quantization_bits", "quantization_backend",
                     "precision", "compile", mode="before")
    @classmethod
    def _registered(cls, v: Any, info: Any) -> Any:
        from optimizers.techniques import REGISTRY

        if not isinstance(v, list):
            raise ValueError(f"must be a list of choices; got {v!r}")
        if not v:
            raise ValueError("must list at least one choice")
        if len({json.dumps(x) for x in v}) != len(v):
            raise ValueError(f"has duplicate choices: {v}")
        allowed = REGISTRY.choices(info.field_name)
        for x in v:
            is_bool = isinstance(x, bool)
            if x not in allowed or is_bool != (info.field_name == "compile"):
                raise ValueError(f"must be one of {', '.join(map(repr, allowed))}; got {x!r}")
        return v

    @field_validator("pruning_amount")
    @classmethod
    def _amounts(cls, v: Range | list[float]) -> Range | list[float]:
        if isinstance(v, list) and (not v or any(not 0.0 < a < 1.0 for a in v)):
            raise ValueError(f"choices must be in (0, 1); got {v}")
        return v


class Resources(_Strict):
    """Per-trial Ray resources. ``custom``: extra Ray resources, e.g. ``{fast_nic: 1}``."""

    cpus_per_trial: float = Field(default=1, gt=0)
    gpus_per_trial: float = Field(default=0, ge=0)
    custom: dict[str, float] = {}

    @field_validator("custom")
    @classmethod
    def _custom(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: a for k, a in v.items() if a <= 0 or k in ("CPU", "GPU", "memory")}
        if bad:
            raise ValueError(f"amounts must be > 0 and names not CPU/GPU/memory; got {bad}")
        return v


class Measure(_Strict):
    """Latency measurement: warm-up calls and seconds of timing per model."""

    warmup: int = Field(default=5, ge=0)
    min_run_time_s: float = Field(default=0.3, gt=0)
    rounds: int = Field(default=5, ge=1)
    artifact: bool = True
    pin_cores: bool = True
    exclusive: bool = True


class SweepConfig(_Strict):
    """The whole sweep. See the README's config reference for every key."""

    name: str = Field(min_length=1)
    model: str
    example_inputs: str
    evaluate: str | None = None
    calibration: str | None = None
    train_step: str | None = None
    # Before ``search``: fields validate in order, and the search lists are checked against the
    # registry, which a plug-in module extends when it is imported.
    plugins: list[str] = []
    search: SearchSpace = SearchSpace()
    objectives: dict[str, Literal["minimize", "maximize"]] = {
        "latency_ms": "minimize", "size_bytes": "minimize", "accuracy": "maximize",
    }
    constraints: dict[str, float] = {}
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    n_trials: int = Field(default=30, ge=1)
    seed: int = 0
    workers: int | None = Field(default=None, ge=1)
    resources: Resources = Resources()
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    trial_timeout_s: float = Field(default=600, gt=0)
    max_retries: int = Field(default=1, ge=0)
    out: str = "runs/sweep"
    storage: str | None = None
    pruning: dict[str, Any] = {}
    quantization: dict[str, Any] = {}
    measure: Measure = Measure()

    @field_validator("plugins")
    @classmethod
    def _plugins(cls, v: list[str], info: ValidationInfo) -> list[str]:
        """Import the technique modules the config names (its own code, like ``model``)."""
        from optimizers.techniques import PluginError, load_plugins

        base = (info.context or {}).get("base_dir")
        try:
            load_plugins(v, base)
        except PluginError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("model", "example_inputs", "evaluate", "calibration", "train_step")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        if v is not None and not _REF.match(v):
            raise ValueError(f"must be a 'module:attr' reference; got {v!r}")
        return v

    @field_validator("out")
    @classmethod
    def _out(cls, v: str) -> str:
        if "://" in v:
            scheme = v.split("://", 1)[0]
            if scheme == "file":
                return v.removeprefix("file://")
            if scheme not in OUT_SCHEMES:
                raise ValueError(f"URI scheme must be one of {', '.join(OUT_SCHEMES)} (or a path); got {scheme!r}")
        return v

    @model_validator(mode="after")
    def _remote_out_needs_storage(self) -> SweepConfig:
        if "://" in self.out and self.storage is None:
            # The default study storage is a journal file inside `out`, and object stores have
            # no appendable files: the study needs a database.
            raise ValueError("@storage: required when 'out' is an object-store URI "
                             "(e.g. sqlite:////shared/study.db or postgresql://...)")
        return self

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("needs at least one objective")
        return _known_keys(v, METRICS, "metric")

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, v: dict[str, float]) -> dict[str, float]:
        return _known_keys(v, CONSTRAINT_KEYS, "constraint")

    @field_validator("pruning")
    @classmethod
    def _pruning(cls, v: dict[str, Any]) -> dict[str, Any]:
        from dataclasses import fields

        from optimizers.pruning import PruningConfig

        allowed = {f.name for f in fields(PruningConfig)} - {"method", "amount"}
        for k in v:
            if k not in allowed:
                raise ValueError(f"unknown pruning option {k!r}; allowed: {', '.join(sorted(allowed))}")
        try:
            PruningConfig(method="magnitude", amount=0.1, **v)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("quantization")
    @classmethod
    def _quantization(cls, v: dict[str, Any]) -> dict[str, Any]:
        from optimizers.quantization import QuantizationConfig

        if "backend" in v:
            raise ValueError("'backend' moved to the search space: use search.quantization_backend "
                             "(auto, torch_ao, torchao, pt2e)")
        allowed = ("per_channel", "reduce_range", "engine")
        _known_keys(v, allowed, "quantization option")
        try:
            QuantizationConfig(quantization_type="dynamic", **v)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return v

    def directions(self) -> list[str]:
        return list(self.objectives.values())


def _format_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-after", "Range", "list[")))
    msg = err["msg"].removeprefix("Value error, ")
    if not err["loc"] and msg.startswith("@"):  # a cross-field rule names its key as "@key: ..."
        loc, msg = msg[1:].split(": ", 1)
        err = {**err, "loc": (loc,)}
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "literal_error":
        msg = msg.replace("Input should be", "must be one of")
    msg = msg.replace("Input should be", "must be")
    others = {str(e["loc"][0]) for e in exc.errors() if e["loc"]} - {str(err["loc"][0])}
    if err["loc"] and str(err["loc"][0]) == "plugins":
        others.discard("search")  # a plug-in that did not load leaves its names unknown: one cause
    extra = f" (also invalid: {', '.join(sorted(others))})" if others else ""
    got = err.get("input")
    skip = err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) or "got " in msg
    got_s = "" if skip else f"; got {got!r}"
    return _printable(f"config key '{loc}': {msg}{got_s}{extra}")


def _printable(text: str) -> str:
    """One line, whatever the config held: control characters and newlines shown as escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def parse_config(data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, *,
                 base_dir: str | Path | None = None) -> SweepConfig:
    """Validate a mapping (plus CLI overrides). Raises :class:`ConfigError` with one line.
    ``base_dir``: where the config's own modules (``plugins``) are looked up first."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config must be a mapping of keys; got {type(data).__name__}")
    merged = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    try:
        return SweepConfig.model_validate(merged, context={"base_dir": str(base_dir) if base_dir else None})
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> tuple[SweepConfig, Path]:
    """Read YAML with ``yaml.safe_load``; return the config and its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {str(path)!r} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config {str(path)!r} is not valid YAML{where}") from None
    if _expanded_size(data, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
        raise ConfigError(f"config {str(path)!r} expands to more than {MAX_CONFIG_VALUES} values "
                          "(YAML aliases nested in aliases?); write the lists out")
    return parse_config(data or {}, overrides, base_dir=path.resolve().parent), path.resolve().parent


MAX_CONFIG_VALUES = 100_000
"""A sweep config is a few hundred values; YAML aliases can make a small file expand to billions."""


def _expanded_size(data: Any, limit: int) -> int:
    """How many values ``data`` holds once its aliases are expanded, counting at most past ``limit``."""
    count, stack = 0, [data]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def resolve_out(cfg: SweepConfig, config_dir: Path) -> str:
    """``out`` relative to the config's folder unless absolute or a URI."""
    if "://" in cfg.out or os.path.isabs(cfg.out):
        return cfg.out
    return str((config_dir / cfg.out).resolve())


def redact(url: str | None, *, keep_user: bool = True) -> str | None:
    """Hide credentials in a URL: the userinfo password and every query value whose key looks
    like a secret (:data:`SECRET_QUERY`). ``keep_user=False`` hides the whole userinfo.

    Passwords are often pasted unencoded, so a ``/``, ``@`` or ``:`` inside one still counts
    as password: the userinfo runs to the last ``@`` before the query when the authority
    holds a ``:`` (``s3://KEY:a/b@bucket``); an ``@`` in the path of a URL without one
    (``s3://bucket/v@2``) is left alone. When in doubt, more is hidden, never less.

    >>> redact("postgresql://u:secret@h/db")
    'postgresql://u:***@h/db'
    >>> redact("s3://b/x?region=eu&secret_key=abc&access_key=AKIA")
    's3://b/x?region=eu&secret_key=***&access_key=***'
    >>> redact("s3://AKIA:ab/c@d@bucket/x?X-Amz-Signature=f00&sig=1")
    's3://AKIA:***@bucket/x?X-Amz-Signature=***&sig=***'
    """
    if not url or "://" not in url:
        return url
    url = SECRET_QUERY.sub(lambda m: f"{m.group(1)}***", url)
    scheme, rest = url.split("://", 1)
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced '[' in the host
        parts = None
    authority = parts.netloc if parts is not None else re.split(r"[/?#]", rest, maxsplit=1)[0]
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, cut)
    if at < 0:
        if ":" not in authority or "@" not in rest:
            return url
        at = rest.rfind("@")  # a password holding '?' or '#'
    elif "/" in rest[:at] and ":" not in authority and "@" not in authority:
        return url  # an '@' in the path, no userinfo
    userinfo, host = rest[:at], rest[at + 1:]
    if ":" not in userinfo and scheme.lower() in ("abfs", "abfss", "wasb", "wasbs"):
        return url  # abfs://CONTAINER@ACCOUNT...: the user part names the container
    user = userinfo.split(":", 1)[0]
    hidden = f"{user}:***" if keep_user and user and ":" in userinfo else "***"
    if parts is not None and parts.netloc.rpartition("@")[0] == userinfo:  # the usual case
        return urlunsplit(parts._replace(netloc=f"{hidden}@{parts.netloc.rpartition('@')[2]}"))
    return f"{scheme}://{hidden}@{host}"  # the password holds '/', '?' or '#'


def config_json(cfg: SweepConfig) -> str:
    data = cfg.model_dump(mode="json")
    data["storage"] = redact(data.get("storage"))
    data["out"] = redact(data.get("out"))
    return json.dumps(data, sort_keys=True)
