"""Revocation in plain words (SPEC §7, issue 17): one table of phrasings, English and Spanish,
each with the outcome it must have. `opt_out` opts the contact out at once; `review` holds
marketing and asks a person; `none` leaves the message to the rules."""

from __future__ import annotations

import pytest

from statemachines.revocation import Keyword, KeywordKind, classify, normalise, tokens

OPT_OUT, REVIEW, OPT_IN, HELP = "opt_out", "review", "opt_in", "help"
NONE = "none"

PHRASINGS: list[tuple[str, str]] = [
    # SPEC §7's keywords, in any case and punctuation (honoured before issue 17 too).
    ("STOP", OPT_OUT),
    ("stop.", OPT_OUT),
    ("Stopall", OPT_OUT),
    ("UNSUBSCRIBE", OPT_OUT),
    ("Cancel", OPT_OUT),
    ("end", OPT_OUT),
    ("QUIT!", OPT_OUT),
    ("revoke", OPT_OUT),
    ("OptOut", OPT_OUT),
    ("opt out", OPT_OUT),
    # Issue 17: answered by the bot before, each an opt-out now.
    ("stop please", OPT_OUT),
    ("\uff33\uff54\uff4f\uff50", OPT_OUT),  # fullwidth "Stop"
    ("STOP\u200b", OPT_OUT),  # a zero-width space after it
    ("\u200bST\u200dOP", OPT_OUT),  # zero-width characters inside it
    ('"STOP"', OPT_OUT),
    ("\u201cStop\u201d", OPT_OUT),  # curly quotes
    ("stop \U0001f6d1", OPT_OUT),  # stop 🛑
    ("\U0001f6d1\ufe0f STOP \U0001f6d1", OPT_OUT),  # emoji with a variation selector
    ("\u00a1STOP!", OPT_OUT),  # ¡STOP!
    ("STOP STOP", OPT_OUT),
    ("stop stop stop!!!", OPT_OUT),
    ("opt-out", OPT_OUT),
    ("Opt-Out", OPT_OUT),
    ("opt_out", OPT_OUT),
    ("opt out please", OPT_OUT),
    ("unsubscribe me", OPT_OUT),
    ("Please stop texting me", OPT_OUT),
    ("S T O P", OPT_OUT),
    ("S.T.O.P.", OPT_OUT),
    ("stop, please stop", OPT_OUT),
    ("Quit texting me now", OPT_OUT),
    ("cancel thanks", OPT_OUT),
    ("END.  Thank you", OPT_OUT),
    # Unambiguous phrases.
    ("Remove me from your list", OPT_OUT),
    ("please remove me from the mailing list, thanks", OPT_OUT),
    ("take me off your list", OPT_OUT),
    ("no more texts please", OPT_OUT),
    ("Stop sending me these messages", OPT_OUT),
    ("Don't text me again", OPT_OUT),
    ("do not contact me", OPT_OUT),
    ("I want to unsubscribe", OPT_OUT),
    ("I would like to opt out", OPT_OUT),
    ("I revoke my consent", OPT_OUT),
    ("leave me alone", OPT_OUT),
    ("opt me out", OPT_OUT),
    ("lose my number", OPT_OUT),
    # Spanish.
    ("baja", OPT_OUT),
    ("BAJA!", OPT_OUT),
    ("no más", OPT_OUT),
    ("No mas por favor", OPT_OUT),
    ("para", OPT_OUT),
    ("¡Para ya!", OPT_OUT),
    ("cancelar", OPT_OUT),
    ("dame de baja", OPT_OUT),
    ("Quiero darme de baja, gracias", OPT_OUT),
    ("no más mensajes", OPT_OUT),
    ("No me envíen más mensajes", OPT_OUT),
    ("ya no quiero recibir más mensajes", OPT_OUT),
    # Never an accidental opt-out: a keyword in a longer message, a person decides.
    ("Don't stop", REVIEW),
    ("don\u2019t stop!", REVIEW),
    ("cancel my order", REVIEW),
    ("End of story", REVIEW),
    ("stop it", REVIEW),
    ("Can you stop by the store at 5?", REVIEW),
    ("I want to cancel my subscription", REVIEW),
    ("quit calling my husband", REVIEW),
    ("how do I opt out of paper bills?", REVIEW),
    ("please remove me from the group chat and add my wife", REVIEW),
    ("no more than two per box", REVIEW),
    ("wrong number", REVIEW),
    ("Quiero cancelar mi cita", REVIEW),
    ("¿Cómo me doy de baja del plan anual?", REVIEW),
    ("no más de dos por persona", REVIEW),
    ("I unsubscribed last week and still get these", REVIEW),
    ("stop 2", REVIEW),
    # Opt-in and help: the keyword alone.
    ("START", OPT_IN),
    ("unstop", OPT_IN),
    ("Yes!", OPT_IN),
    ("\uff33\uff34\uff21\uff32\uff34", OPT_IN),  # fullwidth "START"
    ("HELP", HELP),
    ("info?", HELP),
    # Not about consent: the rules answer.
    ("yes please", NONE),
    ("help me", NONE),
    ("what are your hours?", NONE),
    ("Para mañana, gracias", NONE),
    ("un regalo para mi madre", NONE),
    ("st op", NONE),
    ("stopping by later", NONE),
    ("", NONE),
    ("   ", NONE),
    ("!!! \U0001f6d1", NONE),
]


@pytest.mark.parametrize(("text", "outcome"), PHRASINGS)
def test_each_phrasing_has_its_outcome(text: str, outcome: str) -> None:
    found = classify(text)

    assert (found.kind.value if found is not None else NONE) == outcome


def test_the_table_covers_at_least_sixty_phrasings_in_both_languages() -> None:
    assert len(PHRASINGS) >= 60
    assert len({text for text, _ in PHRASINGS}) == len(PHRASINGS)
    assert {outcome for _, outcome in PHRASINGS} == {OPT_OUT, REVIEW, OPT_IN, HELP, NONE}


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("Opt-Out", "OPT OUT"),
        ("Please stop texting me", "STOP"),
        ("no más", "NO MAS"),
        ("take me off your list", '"take me off your list"'),
        ("cancel my order", "CANCEL"),
        ("I need the wrong number fixed", '"wrong number"'),
    ],
)
def test_the_ledger_reason_names_the_keyword_or_phrase_never_the_message(
    text: str, word: str
) -> None:
    found = classify(text)

    assert found is not None and found.word == word


def test_twilio_opt_out_type_wins_over_the_words() -> None:
    assert classify("don't stop", "STOP") == Keyword(
        kind=KeywordKind.OPT_OUT, word="OptOutType=STOP"
    )


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("\uff33\uff54\uff4f\uff50\u200b!", "stop"),
        ("Don\u2019t   STOP\u2026", "dont stop"),
        ("opt_out/opt-out", "opt out opt out"),
        ("No M\u00c1S \U0001f44b\U0001f3fd", "no mas"),
        ("Stra\u00dfe", "strasse"),  # case folded, not just lower-cased
    ],
)
def test_the_normalised_message(text: str, normal: str) -> None:
    assert normalise(text) == normal


def test_spelled_out_letters_read_as_one_word_only_in_runs_of_three() -> None:
    assert tokens("S T O P now") == ("stop", "now")
    assert tokens("i m ok") == ("i", "m", "ok")
