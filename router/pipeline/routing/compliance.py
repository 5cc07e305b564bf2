"""Consent as routing meets it (SPEC §7): a customer's keyword (STOP, START, HELP, a possible
opt-out) before the rules see the message, and a person's Opt out / Keep subscribed answer to
a possible opt-out. The contact's new consent, its ledger entry and the consent machine's
effects go on the event's work; `work.compliance` names what happened on the run record."""

from __future__ import annotations

import msgspec

from router.pipeline.routing import effects
from router.pipeline.routing.work import Step
from router.store.records import ContactRecord, LedgerRecord
from statemachines import consent
from statemachines.consent import ConsentContext, ConsentOutcome, ConsentState, KeywordKind
from statemachines.conversation import Context, ConversationState


async def keyword(step: Step) -> bool:
    """Consent and help keywords; True when the message was one the rules must not see.
    A possible opt-out is not consumed: it sets `work.consent_review` (`AskPeople`)."""
    event, work = step.event, step.work
    opt_out_type = event.data.get("opt_out_type")
    found = consent.classify(event.text, opt_out_type if isinstance(opt_out_type, str) else None)
    if found is None or event.contact is None:
        return False
    contact = await step.book.get(consent.contact_key(event.contact.address))
    context = ConsentContext(
        event_id=event.id,
        now=step.now,
        address=event.contact.address,
        channel=event.channel.value if event.channel else None,
    )
    outcome = consent.on_keyword(
        ConsentState(contact.consent), found, context, step.config.compliance
    )
    work.compliance = found.kind.value
    if outcome.refused is not None and found.kind is KeywordKind.REVIEW:
        return False  # already opted out: an ordinary message
    if outcome.refused is not None and outcome.consumed:
        work.errors.append(f"consent: {outcome.refused}")
    await _changed(step, contact, outcome)
    return outcome.consumed


async def ask_people(step: Step, reason: str) -> None:
    """A possible opt-out: escalate the conversation with the Opt out / Keep subscribed
    buttons. Already with people, the message went to the thread with those buttons."""
    current = step.work.conversation
    if current is None or current.state is not ConversationState.BOT:
        return
    context = Context(event_id=step.event.id, now=step.now, reason=reason, consent_review=True)
    await effects.fire(step, "escalate", context)


async def decision(step: Step, answer: consent.Decision) -> None:
    """A person's Opt out / Keep subscribed on a possible opt-out, for the contact of the
    conversation the button's thread escalated; recorded in the ledger with this event."""
    event, work = step.event, step.work
    current = work.conversation
    work.compliance = f"decision: {answer.value}"
    if current is None or current.contact is None:
        work.errors.append(f"consent decision {answer.value}: no contact to decide for")
        return
    contact = await step.book.get(consent.contact_key(current.contact))
    context = ConsentContext(
        event_id=event.id, now=step.now, address=current.contact, channel=current.channel
    )
    who = event.contact.address if event.contact else "someone"
    outcome = consent.on_decision(
        ConsentState(contact.consent), answer, f"{who} in Slack", context, step.config.compliance
    )
    if outcome.refused is not None:
        work.errors.append(f"consent: {outcome.refused}")
        return
    await _changed(step, contact, outcome)


async def _changed(step: Step, contact: ContactRecord, outcome: ConsentOutcome) -> None:
    """The contact's new consent and its ledger entry (on a change), and the effects."""
    if outcome.ledger is not None:
        updated = msgspec.structs.replace(
            contact,
            consent=outcome.state.value,
            opted_out_at=step.now if outcome.state is ConsentState.OPTED_OUT else None,
        )
        step.book.put(updated)
        entry = LedgerRecord(
            at=outcome.ledger.at,
            event_id=step.event.id,
            channel=outcome.ledger.channel,
            change=outcome.ledger.change.value,
            reason=outcome.ledger.reason,
        )
        step.work.contacts.append((updated, entry))
    await effects.apply(step, outcome.effects)
