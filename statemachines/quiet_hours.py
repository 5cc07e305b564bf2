"""Quiet hours (SPEC §7): when may a held message leave? Pure: `now` comes in, no clock is read.

A message is held while the recipient's local time is inside `compliance.quiet_hours` or, for a
US number with `compliance.state_windows` on, outside its state's allowed calling window; the most
restrictive wins. Windows are parsed and evaluated by `router.timewindows` (the rules' `during:`
windows), so both speak the same format.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as phone_timezone

from router.config import ComplianceConfig
from router.timewindows import Window, load_zone, parse_window

#: Categories held by quiet hours. SPEC §7 holds only marketing; no config key changes it yet.
HELD_CATEGORIES: frozenset[str] = frozenset({"marketing"})

#: Allowed hours for telephone solicitations, in the called person's local time. The strictest
#: state rules as of 2025; sources (check them against the current statutes before relying on
#: them, laws change):
#:   FL  Fla. Stat. § 501.059(8)(a) (Florida Telephone Solicitation Act, 2021): 8 a.m.-8 p.m.
#:   MD  Md. Code, Com. Law § 14-4503 (Stop the Spam Calls Act, 2023): 8 a.m.-8 p.m.
#:   MS  Mississippi Telephone Solicitation Act (Miss. Code Ann. Title 77, ch. 3): 8 a.m.-8 p.m.
#:   NJ  N.J.S.A. 56:8-119 et seq. and N.J.A.C. 13:45D (as given in issue 8): 8 a.m.-8 p.m.
#:   OK  Okla. Stat. tit. 15, § 775C.4 (Oklahoma Telephone Solicitation Act, 2022): 8 a.m.-8 p.m.
#:   CT  Conn. Gen. Stat. § 42-288a (as amended 2023): 9 a.m.-8 p.m.
#:   TX  Tex. Bus. & Com. Code § 301.051: 9 a.m.-9 p.m. Mon-Sat, noon-9 p.m. Sunday.
STATE_WINDOWS: dict[str, str] = {
    "FL": "08:00-20:00",
    "MD": "08:00-20:00",
    "MS": "08:00-20:00",
    "NJ": "08:00-20:00",
    "OK": "08:00-20:00",
    "CT": "09:00-20:00",
    "TX": "Mon-Sat 09:00-21:00; Sun 12:00-21:00",
}

#: Area codes (NPAs) of those states, overlays included. Source: NANPA's NPA database
#: (https://www.nationalnanpa.com/enas/npa_query.do, "Geographic NPAs in service" by state);
#: the tests cross-check each code against libphonenumber's geocoding data.
AREA_CODES: dict[str, tuple[str, ...]] = {
    "FL": (
        "239", "305", "321", "324", "352", "386", "407", "448", "561", "645", "656", "689",
        "727", "728", "754", "772", "786", "813", "850", "863", "904", "941", "954",
    ),
    "MD": ("227", "240", "301", "410", "443", "667"),
    "MS": ("228", "601", "662", "769"),
    "NJ": ("201", "551", "609", "640", "732", "848", "856", "862", "908", "973"),
    "OK": ("405", "539", "572", "580", "918"),
    "CT": ("203", "475", "860", "959"),
    "TX": (
        "210", "214", "254", "281", "325", "346", "361", "409", "430", "432", "469", "512",
        "682", "713", "726", "737", "806", "817", "830", "832", "903", "915", "936", "940",
        "945", "956", "972", "979",
    ),
}  # fmt: skip
_STATE_OF_AREA_CODE = {code: state for state, codes in AREA_CODES.items() for code in codes}
#: Far enough to pass any weekly window twice, whatever the DST shifts.
_HORIZON_DAYS = 9


def not_before(
    now: datetime,
    category: str,
    recipient_zone: str | None,
    phone_number: str | None,
    compliance: ComplianceConfig,
    *,
    held: frozenset[str] = HELD_CATEGORIES,
) -> datetime | None:
    """When a message made at `now` (timezone-aware) may leave, in UTC; None if at once.

    The zone is `recipient_zone` if valid, else every zone the number's numbering plan gives
    (held until it is open in all of them), else `compliance.default_timezone`."""
    if category not in held:
        return None
    zones = recipient_zones(recipient_zone, phone_number, compliance.default_timezone)
    quiet = _window(compliance.quiet_hours)
    allowed = _state_window(phone_number) if compliance.state_windows else None
    if not _held(now, zones, quiet, allowed):
        return None
    opening = _next_open(now, zones, quiet, allowed)
    if opening is None:  # quiet hours cover all the state allows: the law's window still binds
        opening = _next_open(now, zones, None, allowed)
    return opening


def us_state(phone_number: str | None) -> str | None:
    """The state of a US number's area code, when it is one the table knows."""
    number = _parse(phone_number)
    if number is None or phonenumbers.region_code_for_number(number) != "US":
        return None
    return _STATE_OF_AREA_CODE.get(str(number.national_number)[:3])


def recipient_zones(
    recipient_zone: str | None, phone_number: str | None, default_timezone: str
) -> tuple[ZoneInfo, ...]:
    """The given zone if valid, else the number's zones, else the default (SPEC §7 order)."""
    if recipient_zone:
        try:
            return (load_zone(recipient_zone),)
        except ValueError:
            pass
    return _number_zones(phone_number) or (load_zone(default_timezone),)


def _held(
    moment: datetime, zones: Iterable[ZoneInfo], quiet: Window | None, allowed: Window | None
) -> bool:
    """Inside quiet hours, or outside the state's window, in any of the zones."""
    for zone in zones:
        local = moment.astimezone(zone)
        if (quiet is not None and quiet.contains(local)) or (
            allowed is not None and not allowed.contains(local)
        ):
            return True
    return False


def _next_open(
    now: datetime, zones: tuple[ZoneInfo, ...], quiet: Window | None, allowed: Window | None
) -> datetime | None:
    """The first window edge after `now` that is open everywhere. Held-ness only changes at an
    edge (local wall time), so trying each edge, as a real instant, finds the earliest; an edge
    that falls in a DST gap lands after it, and is checked at its true local time."""
    for candidate in sorted(_edges(now, zones, (quiet, allowed))):
        if candidate > now and not _held(candidate, zones, quiet, allowed):
            return candidate
    return None


def _edges(
    now: datetime, zones: tuple[ZoneInfo, ...], windows: Iterable[Window | None]
) -> set[datetime]:
    minutes = {0} | {m for w in windows if w for s in w.spans for m in (s.start, s.end)}
    edges: set[datetime] = set()
    for zone in zones:
        today = now.astimezone(zone).date()
        for offset in range(-1, _HORIZON_DAYS):
            edges.update(_instant(today + timedelta(days=offset), m, zone) for m in minutes)
    return edges


def _instant(day: date, minute: int, zone: ZoneInfo) -> datetime:
    local = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=zone)
    return local.astimezone(UTC)


@lru_cache(maxsize=64)
def _window(spec: str) -> Window:
    return parse_window(spec)


def _state_window(phone_number: str | None) -> Window | None:
    state = us_state(phone_number)
    return _window(STATE_WINDOWS[state]) if state else None


@lru_cache(maxsize=8192)
def _number_zones(phone_number: str | None) -> tuple[ZoneInfo, ...]:
    number = _parse(phone_number)
    if number is None:
        return ()
    names = [n for n in phone_timezone.time_zones_for_number(number) if n != "Etc/Unknown"]
    return tuple(load_zone(name) for name in names)


def _parse(phone_number: str | None) -> phonenumbers.PhoneNumber | None:
    text = (phone_number or "").strip().removeprefix("whatsapp:")
    if not text.startswith("+"):
        return None
    try:
        return phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
