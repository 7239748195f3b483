"""configs/claims.yaml: the research's claims as data, loaded and validated.

Schema ``kvbench.claims/1``::

    schema: kvbench.claims/1
    claims:
      - id: hot-window            # [a-z0-9-], unique: kvbench claims --claim hot-window
        quote: "..."              # the claim's words
        source: "..."             # where it is said
        confirms: "..."           # the kvbench figure that would confirm it
        refutes: "..."            # ... or refute it
        check: hot_window         # a key of kvbench.claims.checks.CHECKS
        params: {...}             # that check's parameters (docs/claims.md)

Anything malformed is one KvbenchError line naming the file, the claim and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from kvbench.claims.checks import CHECKS
from kvbench.claims.core import REQUIRED, Claim, decimal_size
from kvbench.errors import KvbenchError
from kvbench.sizing.scenario import TIERS
from kvbench.spec import configs_dir

SCHEMA = "kvbench.claims/1"
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]*$")
TEXT_FIELDS = ("id", "quote", "source", "confirms", "refutes", "check")


def claims_path() -> Path:
    return configs_dir() / "claims.yaml"


# ------------------------------------------------------------------------ parameter kinds
def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v == float("inf"):
        return None
    return float(v)


def _fraction(v: Any) -> float | None:
    x = _number(v)
    return x if x is not None and x <= 1 else None


def _text(v: Any) -> str | None:
    return v.strip() if isinstance(v, str) and v.strip() else None


def _list_of(item: Callable[[Any], Any]) -> Callable[[Any], list | None]:
    def parse(v: Any) -> list | None:
        if not isinstance(v, list):
            return None
        out = [item(x) for x in v]
        return out if None not in out else None
    return parse


def _mapping_of(item: Callable[[Any], Any], keys: tuple[str, ...] | None = None) -> Callable[[Any], dict | None]:
    def parse(v: Any) -> dict | None:
        if not isinstance(v, dict) or not v:
            return None
        out = {str(k): item(x) for k, x in v.items()}
        if None in out.values() or (keys is not None and not set(out) <= set(keys)):
            return None
        return out
    return parse


def _size_text(v: Any) -> str | None:
    return str(v).strip() if isinstance(v, str) and decimal_size(v) is not None else None


#: kind -> (parser returning the value or None, what a valid value is)
PARAM_KINDS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "text": (_text, "a non-empty string"),
    "number": (_number, "a positive number"),
    "fraction": (_fraction, "a number in (0, 1]"),
    "numbers": (_list_of(_number), "a list of positive numbers"),
    "names": (_list_of(_text), "a list of non-empty strings"),
    "fractions": (_mapping_of(_fraction), "a mapping of names to numbers in (0, 1]"),
    "sizes": (_mapping_of(_size_text, TIERS),
              f"a mapping of tiers ({', '.join(TIERS)}) to sizes such as '200 PB' (GB, TB, PB or EB)"),
}


# ------------------------------------------------------------------------ validation
def _params(check: str, given: Any, where: str) -> dict[str, Any]:
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise KvbenchError(f"{where}: params must be a mapping")
    spec = CHECKS[check].params
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise KvbenchError(f"{where}: params.{unknown[0]} is not a parameter of check {check} "
                           f"(known: {', '.join(spec)})")
    out = {}
    for name, param in spec.items():
        if name not in given:
            if param.default is REQUIRED:
                raise KvbenchError(f"{where}: params.{name} is missing ({param.help})")
            out[name] = param.default
            continue
        parse, expected = PARAM_KINDS[param.kind]
        value = parse(given[name])
        if value is None:
            raise KvbenchError(f"{where}: params.{name} must be {expected} (got {given[name]!r})")
        out[name] = value
    return out


def _claim(item: Any, where: str) -> Claim:
    if not isinstance(item, dict):
        raise KvbenchError(f"{where}: each claim must be a mapping")
    unknown = sorted(set(item) - {*TEXT_FIELDS, "params"})
    if unknown:
        raise KvbenchError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(TEXT_FIELDS)}, params)")
    for f in TEXT_FIELDS:
        if _text(item.get(f)) is None:
            raise KvbenchError(f"{where}: field {f} must be a non-empty string")
    cid = item["id"].strip()
    if not ID_PATTERN.match(cid):
        raise KvbenchError(f"{where}: id {cid!r} must be lower-case letters, digits and '-'")
    where = f"{where} ({cid})"
    check = item["check"].strip()
    if check not in CHECKS:
        raise KvbenchError(f"{where}: unknown check {check!r} (known: {', '.join(CHECKS)})")
    return Claim(cid, item["quote"].strip(), item["source"].strip(), item["confirms"].strip(),
                 item["refutes"].strip(), check, _params(check, item.get("params"), where))


def claims_from_dict(data: Any, origin: str = "<claims>") -> list[Claim]:
    """Validate a parsed claims document and build its claims, in file order."""
    if not isinstance(data, dict):
        raise KvbenchError(f"{origin}: not a claims file (top level is not a mapping)")
    if data.get("schema") != SCHEMA:
        raise KvbenchError(f"{origin}: schema must be {SCHEMA} (got {data.get('schema')!r})")
    unknown = sorted(set(data) - {"schema", "claims"})
    if unknown:
        raise KvbenchError(f"{origin}: unknown top-level field {unknown[0]!r} (known: schema, claims)")
    items = data.get("claims")
    if not isinstance(items, list) or not items:
        raise KvbenchError(f"{origin}: claims must be a non-empty list")
    claims, seen = [], set()
    for i, item in enumerate(items):
        claim = _claim(item, f"{origin}: claims[{i}]")
        if claim.id in seen:
            raise KvbenchError(f"{origin}: claims[{i}]: id {claim.id!r} is given twice")
        seen.add(claim.id)
        claims.append(claim)
    return claims


def load_claims(path: str | Path | None = None) -> list[Claim]:
    """Load configs/claims.yaml (or ``path``)."""
    import yaml  # local: keep import cheap

    path = Path(path) if path else claims_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KvbenchError(f"claims file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KvbenchError(f"claims file {path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KvbenchError(f"claims file {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return claims_from_dict(data, origin=f"claims file {path}")


def select(claims: list[Claim], ids: list[str] | None) -> list[Claim]:
    """The claims named by ``ids`` (all when None), in file order; unknown ids are an error."""
    if ids is None:
        return claims
    known = {c.id: c for c in claims}
    wanted = [i.strip() for text in ids for i in text.split(",") if i.strip()]
    if not wanted:
        raise KvbenchError("--claim is empty: give a claim id (kvbench claims --list shows them)")
    for i in wanted:
        if i not in known:
            raise KvbenchError(f"unknown claim {i!r}; known: {', '.join(known)}")
    return [c for c in claims if c.id in wanted]
