"""The add-only write-back onto the primary, shared by both strategies, and its verification.

It starts from the primary as Podium holds it now and sends only what is missing from it: fills of
empty fields, tags and attributes attached by uid, the locations added, marketing consent withdrawn
where the strictest member requires it, conversations moved. It never replaces a list wholesale and
never overwrites a value someone put there meanwhile, so an edit made in Podium during the merge
survives. It then reads the primary back once and checks that everything planned is present and that
the consent invariant holds (presence, not equality with a stale picture).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dedup.consent import mask, needs_for
from dedup.merge.readback import channel_consent, survivor_view
from dedup.records import attribute_key, tag_key
from dedup.survivorship import MergePlan, verify_survivor
from podium_client import Contact, PodiumClient


@dataclass
class WriteBack:
    """What one write-back sent (for the audit trail, without PII values) and what the read-back shows."""

    survivor: Contact
    sent: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.problems


def write_back(
    client: PodiumClient,
    plan: MergePlan,
    live: Contact,
    *,
    identifier: str,
    region: str,
    primary_name_before: str | None,
    move_conversations: bool,
) -> WriteBack:
    """Send onto the primary what the plan needs and it lacks now; read it back; verify.

    ``live`` is the primary as Podium holds it now (a fresh read, or the merge's answer).
    ``primary_name_before`` is its name when the plan was made: a name changed since is someone's edit
    and is kept.
    """
    sent, answered = send_missing(
        client, plan, live, identifier=identifier, region=region, primary_name_before=primary_name_before,
        move_conversations=move_conversations,
    )  # fmt: skip
    if not sent:
        survivor = live
    elif (
        answered is not None and answered.uid == plan.primary_uid and sent[-1]["call"] == "campaigns/opt_out"
    ):
        # campaigns/opt_out answers with the contact holding the number; when that is the primary and it
        # was the last write, its body is the read-back (one GET fewer).
        survivor = answered
    else:
        survivor = client.get_contact(identifier)
    problems = verify_survivor(plan, survivor_view(survivor, region), conversations=move_conversations)
    if survivor.uid != plan.primary_uid:
        problems.insert(0, f"identifier reached contact {survivor.uid}, not the primary {plan.primary_uid}")
    return WriteBack(survivor, sent, problems)


def send_missing(
    client: PodiumClient,
    plan: MergePlan,
    live: Contact,
    *,
    identifier: str,
    region: str,
    primary_name_before: str | None,
    move_conversations: bool,
    before_merge: bool = False,
) -> tuple[list[dict[str, Any]], Contact | None]:
    """Send onto the primary what the plan needs and ``live`` lacks, without reading it back.

    Returns what was sent and the last contact a write answered with (``campaigns/opt_out`` answers
    with one). ``before_merge`` (the native strategy, before Podium's merge) leaves two things for
    after it: marketing consent, because withdrawing it is a number-wide write that also reaches the
    duplicates, which must still read as planned if the merge has to be reconciled; and locations,
    because adding the duplicates' locations to the primary first would walk around a tenant that
    refuses cross-location merges (422), a decision that is Podium's to make.
    """
    sent: list[dict[str, Any]] = []
    fields: dict[str, Any] = {}
    if plan.name is not None and (not (live.name or "").strip() or live.name == primary_name_before):
        if live.name != plan.name:
            fields["name"] = plan.name
    if plan.address is not None and live.address is None:
        fields["address"] = plan.address
    if plan.email is not None and not live.emails:
        fields["email"] = plan.email
    if plan.phone is not None and not live.phones:
        fields["phoneNumber"] = plan.phone
    if not before_merge and plan.locations and not set(plan.locations) <= set(live.location_uids):
        fields["locations"] = [
            *live.location_uids,
            *(u for u in plan.locations if u not in live.location_uids),
        ]
    if fields:
        client.update_contact(identifier, fields)
        sent.append({"call": "PATCH", "fields": sorted(fields)})

    held_uids = {t.uid for t in live.tags if t.uid}
    held_labels = {tag_key(t.label) for t in live.tags}
    for tag in plan.tags:
        if (tag.uid and tag.uid in held_uids) or tag_key(tag.label) in held_labels:
            continue
        tag_uid = tag.uid or client.ensure_tag(tag.label).uid
        assert tag_uid is not None
        client.attach_tag(identifier, tag_uid)
        sent.append({"call": "attach_tag", "tag": tag.label})

    # An attribute held with an empty value holds nothing: the planned value is set over it.
    attribute_uids = {a.uid for a in live.attributes if a.uid and a.text.strip()}
    attribute_labels = {attribute_key(a.label) for a in live.attributes if a.text.strip()}
    definitions: dict[str, str] | None = None
    for attribute in plan.attributes:
        if (attribute.uid and attribute.uid in attribute_uids) or attribute_key(
            attribute.label
        ) in attribute_labels:
            continue
        attribute_uid = attribute.uid
        if attribute_uid is None:
            if definitions is None:
                definitions = {attribute_key(d.label): d.uid for d in client.list_attribute_definitions()}
            attribute_uid = definitions.get(attribute_key(attribute.label))
            if attribute_uid is None:
                continue  # verification names it: the organization no longer has that attribute
        held_empty = attribute_uid in {a.uid for a in live.attributes}
        client.set_attribute(identifier, attribute_uid, attribute.value, existing=held_empty)
        sent.append({"call": "set_attribute", "attribute": attribute.label})

    # Consent is judged on the primary as it is now, so an opt-in added meanwhile is withdrawn too.
    answered: Contact | None = None
    if not before_merge:
        for phone in needs_for(plan.consent, channel_consent(live, region)).opt_out_phones:
            answered = client.opt_out_phone(phone)
            sent.append({"call": "campaigns/opt_out", "phone": mask(phone)})

    if move_conversations:
        for conversation in plan.conversation_uids:
            if conversation not in live.conversation_uids:
                client.update_contact(identifier, {"conversationUid": conversation})
                sent.append({"call": "PATCH", "fields": ["conversationUid"], "conversation": conversation})
                answered = None
    return sent, answered


def missing_conversations(plan: MergePlan, survivor: Contact) -> list[str]:
    """Conversations the plan moves that the survivor does not show (the tenant did not move them)."""
    return [c for c in plan.conversation_uids if c not in survivor.conversation_uids]
