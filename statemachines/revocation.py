"""Revocation in plain words (SPEC §7): what a customer's message says about consent, decided
on the message normalised, purely (no I/O, no clock).

The FCC's 2024 rule (47 CFR 64.1200(a)(10), in force since April 2025) names seven words (stop,
quit, end, revoke, opt out, cancel, unsubscribe) and requires any wording a reasonable person
would read as a revocation to be honoured. A revocation must never be missed, and a customer
asking to "cancel my order" must never be opted out by accident, so a message is one of:

- a keyword (`STOP`, `START`, `HELP`, ...), alone or repeated;
- an opt-out keyword with courtesy words only (`stop texting me please`), or an unambiguous
  phrase (`remove me from your list`, `no más`): an opt-out;
- a longer message holding an opt-out word or phrase (`cancel my order`, `don't stop`): a
  possible opt-out, which a person reviews;
- anything else: not about consent.
"""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum

import msgspec


class KeywordKind(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    #: Not clearly a revocation, not clearly not: a person decides (SPEC §7 `review`).
    REVIEW = "review"


class Keyword(msgspec.Struct, frozen=True, kw_only=True):
    """What a message means for consent, and the word or phrase that decided it."""

    kind: KeywordKind
    #: `STOP`, `OPT OUT`, `OptOutType=STOP`, `"remove me from your list"`: the ledger's reason.
    word: str


_OPT_OUT_WORDS = ["stop", "stopall", "unsubscribe", "cancel", "end", "quit", "revoke", "optout"]
#: Whole-message keywords, normalised (SPEC §7), plus the Spanish ones a US audience sends.
#: `opt out` with a space is counted by the FCC, not by Twilio.
KEYWORDS: dict[str, KeywordKind] = {
    **dict.fromkeys([*_OPT_OUT_WORDS, "opt out"], KeywordKind.OPT_OUT),
    **dict.fromkeys(["baja", "para", "no mas", "cancelar"], KeywordKind.OPT_OUT),
    **dict.fromkeys(["start", "unstop", "yes"], KeywordKind.OPT_IN),
    **dict.fromkeys(["help", "info"], KeywordKind.HELP),
}
#: Words that change nothing beside an opt-out keyword: `stop texting me please`. No negation
#: is here, so `don't stop` is never read as `stop`.
COURTESY = frozenset(
    [
        "please",
        "pls",
        "plz",
        "me",
        "now",
        "thanks",
        "thank",
        "you",
        "thx",
        "ty",
        "ok",
        "okay",
        "hi",
        "hello",
        "hey",
        "just",
        "already",
        "right",
        "immediately",
        "asap",
        "texting",
        "messaging",
        "emailing",
        "calling",
        "sending",
        "por",
        "favor",
        "porfa",
        "porfavor",
        "gracias",
        "ya",
        "ahora",
    ]
)
#: Inside a longer message, these raise a possible opt-out. `para` ("stop" alone, "for" in a
#: sentence) does not: it would put half of all Spanish messages up for review.
REVIEW_WORDS = frozenset([*_OPT_OUT_WORDS, "unsub", "unsubscribed", "baja", "cancelar"])

_LIST = r"(?:(?:your|the|this|ur|my|all|these) )?(?:\w+ )?lists?"
_TEXTS = r"(?:texts|text messages|messages|msgs|sms|promos|promotions|offers|marketing)"
_SEND = r"(?:send|text|message|msg|contact|email|call)"
_ES_SEND = r"(?:envien|manden|mandes|envies|escriban|escribas)"
#: Phrases that say "stop" unambiguously, as a whole message (courtesy words around them are
#: allowed): label (the ledger's reason) -> pattern over the normalised text.
CLEAR_PHRASES: dict[str, str] = {
    "remove me from your list": rf"remove (?:me|my number)(?: from {_LIST})?",
    "take me off your list": rf"take (?:me|my number) off {_LIST}",
    "opt me out": r"opt me out",
    "unsubscribe me": rf"unsubscribe me from (?:{_LIST}|this|these|{_TEXTS})",
    "no more texts": rf"(?:no|(?:do not|dont) send (?:me )?any) more {_TEXTS}",
    "stop sending texts": rf"stop (?:sending )?(?:me )?(?:these |the |your |any )?{_TEXTS}",
    "do not text me": rf"(?:do not|dont|never) {_SEND} me(?: again| anymore| any more)?",
    "i want to unsubscribe": r"i (?:want|wish|would like|d like) to (?:unsubscribe|opt out|optout)",
    "revoke consent": r"(?:i )?revoke (?:my )?consent",
    "leave me alone": r"leave me alone",
    "lose my number": r"(?:lose|delete|remove) my number",
    "dame de baja": r"(?:quiero )?(?:dame|darme|denme|dar|me doy) de baja",
    "no más mensajes": r"no mas (?:mensajes|textos|sms)",
    "no me envíen más": rf"(?:ya )?no (?:me )?{_ES_SEND} mas(?: mensajes| textos)?",
    "no quiero más mensajes": r"(?:ya )?no quiero (?:recibir )?mas (?:mensajes|textos|sms)",
}
#: Phrases that may be a revocation inside a longer message: a person looks.
REVIEW_PHRASES: dict[str, str] = {
    "opt out": r"opt out",
    "remove me": r"remove me",
    "take me off": r"take me off",
    "no more": r"no more",
    "no más": r"no mas",
    "do not text": rf"(?:do not|dont) {_SEND}",
    "wrong number": r"wrong number",
    "de baja": r"de baja",
}
_COURTESY = "|".join(sorted(COURTESY))
_CLEAR = {
    label: re.compile(rf"(?:(?:{_COURTESY}) )*{pattern}(?: (?:{_COURTESY}))*")
    for label, pattern in CLEAR_PHRASES.items()
}
_MENTIONS = {
    label: re.compile(rf"\b{pattern}\b")
    for label, pattern in {**CLEAR_PHRASES, **REVIEW_PHRASES}.items()
}
#: Twilio's `OptOutType` form field, sent when its Advanced Opt-Out recognised a keyword.
OPT_OUT_TYPES: dict[str, KeywordKind] = {
    "STOP": KeywordKind.OPT_OUT,
    "START": KeywordKind.OPT_IN,
    "HELP": KeywordKind.HELP,
}
#: Quotes beyond Unicode's initial and final quote marks (curly, angle): dropped with them,
#: so `don't` reads `dont`. Acute accent, low-9 quotes, modifier letter apostrophe.
_QUOTES = frozenset("\"'`\u00b4\u201a\u201e\u02bc")


def classify(text: str | None, opt_out_type: str | None = None) -> Keyword | None:
    """What the message means for consent; None when nothing. Twilio's `OptOutType` wins, as
    Twilio has already acted on it."""
    given = (opt_out_type or "").strip().upper()
    provider = OPT_OUT_TYPES.get(given)
    if provider is not None:
        return Keyword(kind=provider, word=f"OptOutType={given}")
    words = tokens(text or "")
    if not words:
        return None
    return _keyword(words) or _opt_out(words) or _clear_phrase(words) or _mention(words)


def normalise(text: str) -> str:
    """The text as matching reads it: NFKC, case folded, accents, zero-width characters and
    quotes dropped, punctuation, symbols and emoji read as spaces, one space between words."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    kept: list[str] = []
    for char in folded:
        category = unicodedata.category(char)
        if char in _QUOTES or category in ("Mn", "Me", "Cf", "Pi", "Pf"):
            continue  # accents, variation selectors, zero-width characters, quotes
        kept.append(char if category[0] in "LN" else " ")
    return " ".join("".join(kept).split())


def tokens(text: str) -> tuple[str, ...]:
    """The normalised words; a run of three or more single letters (`S T O P`) is one word."""
    words: list[str] = []
    run: list[str] = []
    for word in [*normalise(text).split(), ""]:
        if len(word) == 1 and word.isalpha():
            run.append(word)
            continue
        words += ["".join(run)] if len(run) >= 3 else run
        run = []
        if word:
            words.append(word)
    return tuple(words)


def _keyword(words: tuple[str, ...]) -> Keyword | None:
    """The whole message is one keyword, perhaps repeated (`STOP STOP`)."""
    for keyword, kind in KEYWORDS.items():
        if _repeats(words, tuple(keyword.split())):
            return Keyword(kind=kind, word=keyword.upper())
    return None


def _opt_out(words: tuple[str, ...]) -> Keyword | None:
    """An opt-out keyword with courtesy words only: `Please stop texting me`."""
    found = _keyword(tuple(word for word in words if word not in COURTESY))
    return found if found is not None and found.kind is KeywordKind.OPT_OUT else None


def _clear_phrase(words: tuple[str, ...]) -> Keyword | None:
    text = " ".join(words)
    for label, pattern in _CLEAR.items():
        if pattern.fullmatch(text):
            return Keyword(kind=KeywordKind.OPT_OUT, word=f'"{label}"')
    return None


def _mention(words: tuple[str, ...]) -> Keyword | None:
    """A longer message that holds an opt-out word or phrase: a possible opt-out."""
    for word in words:
        if word in REVIEW_WORDS:
            return Keyword(kind=KeywordKind.REVIEW, word=word.upper())
    text = " ".join(words)
    for label, pattern in _MENTIONS.items():
        if pattern.search(text):
            return Keyword(kind=KeywordKind.REVIEW, word=f'"{label}"')
    return None


def _repeats(words: tuple[str, ...], unit: tuple[str, ...]) -> bool:
    """`words` is `unit` once or more, nothing else."""
    size = len(unit)
    return (
        bool(words)
        and len(words) % size == 0
        and all(words[i : i + size] == unit for i in range(0, len(words), size))
    )
