"""The compliance invariant on Podium's per-channel consent model, as pure functions.

Podium keeps consent per channel: the locations where a phone number or email may receive marketing,
and whether it opted out of transactional messages. After anything the product does, the surviving
contact's consent for each number and address must be **at least as strict as the strictest member
that held the same number or address**:

* marketing opt-in only at locations where *every* such member was opted in (the intersection);
* a transactional opt-out wherever *any* such member had one.

Numbers compare by E.164 (``0412 345 678`` and ``+61412345678`` are one number), emails by their
normalized form. A number or address the survivor does not hold has no consent to check: nobody is
messaged through the survivor at it. A phone without a single digit ("n/a") reaches nobody either.

What Podium's published API can do to make the survivor stricter is narrow: ``campaigns/opt_out``
withdraws a phone number's marketing consent (everywhere). Nothing publishes a way to opt an email out
of marketing or to set a transactional opt-out, so a stricter consent of that kind held only by a
duplicate cannot be carried onto the primary (``ConsentNeeds.uncarriable``); such a merge must not run
onto that primary.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PHONE = "PHONE"
EMAIL = "EMAIL"


@dataclass(frozen=True, slots=True)
class ChannelConsent:
    """One channel's consent: its identity (E.164 / normalized email), as typed, and its consent."""

    kind: str
    identity: str
    identifier: str
    opted_in: frozenset[str]
    transactional_opt_out: bool

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (for snapshots and audit)."""
        return {
            "kind": self.kind,
            "identity": self.identity,
            "identifier": self.identifier,
            "optedIn": sorted(self.opted_in),
            "transactionalOptOut": self.transactional_opt_out,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ChannelConsent:
        """Inverse of ``to_dict``."""
        opted_in = data.get("optedIn") or ()
        return cls(
            kind=str(data.get("kind") or ""),
            identity=str(data.get("identity") or ""),
            identifier=str(data.get("identifier") or ""),
            opted_in=frozenset(str(x) for x in opted_in)
            if isinstance(opted_in, list | tuple)
            else frozenset(),
            transactional_opt_out=bool(data.get("transactionalOptOut")),
        )


@dataclass(frozen=True, slots=True)
class Requirement:
    """What the survivor's consent for one number/address must be at least as strict as."""

    kind: str
    identity: str
    allowed_opt_in: frozenset[str]
    transactional_opt_out: bool
    held_by: tuple[str, ...]
    # The members that opted it out of transactional messages (named in messages, not every holder).
    opted_out_by: tuple[str, ...] = ()


def reachable(channel: ChannelConsent) -> bool:
    """Whether anyone could message this channel: an email, or a phone with digits in it.

    A phone typed as "n/a" or "call me" is kept on the contact (never dropped), but no message can
    reach it, so it carries no consent to protect; letting all of them share one identity would make
    unrelated junk of different members constrain each other.
    """
    return channel.kind != PHONE or any(ch.isdigit() for ch in channel.identity)


def requirements(members: Mapping[str, Iterable[ChannelConsent]]) -> dict[str, Requirement]:
    """The strictest consent per identity over the members (``{member uid: its channels}``).

    ``held_by`` names every member holding the number or address; ``opted_out_by`` those that opted it
    out of transactional messages, so messages name who said no rather than everyone.
    """
    allowed: dict[str, frozenset[str]] = {}
    transactional: dict[str, bool] = {}
    kinds: dict[str, str] = {}
    holders: dict[str, list[str]] = {}
    strict: dict[str, list[str]] = {}
    for uid, channels in members.items():
        for c in channels:
            if not c.identity or not reachable(c):
                continue
            key = c.identity
            kinds[key] = c.kind
            allowed[key] = allowed[key] & c.opted_in if key in allowed else c.opted_in
            transactional[key] = transactional.get(key, False) or c.transactional_opt_out
            if uid not in holders.setdefault(key, []):
                holders[key].append(uid)
            if c.transactional_opt_out and uid not in strict.setdefault(key, []):
                strict[key].append(uid)
    return {
        key: Requirement(
            kinds[key], key, allowed[key], transactional[key], tuple(holders[key]), tuple(strict.get(key, ()))
        )
        for key in allowed
    }


def stricter(a: Mapping[str, Requirement], b: Mapping[str, Requirement]) -> dict[str, Requirement]:
    """Requirements that hold the survivor to both ``a`` and ``b``."""
    out = dict(a)
    for key, r in b.items():
        if key not in out:
            out[key] = r
            continue
        o = out[key]
        out[key] = Requirement(
            r.kind,
            key,
            o.allowed_opt_in & r.allowed_opt_in,
            o.transactional_opt_out or r.transactional_opt_out,
            tuple(dict.fromkeys((*o.held_by, *r.held_by))),
            tuple(dict.fromkeys((*o.opted_out_by, *r.opted_out_by))),
        )
    return out


def violations(required: Mapping[str, Requirement], survivor: Iterable[ChannelConsent]) -> list[str]:
    """How the survivor's consent is weaker than required (empty when the invariant holds).

    Each message names the identity's kind and the rule broken, never the full number or address (they
    end up in logs); callers add the masked identity where they show it.
    """
    problems: list[str] = []
    for c in survivor:
        need = required.get(c.identity)
        if need is None:
            continue
        extra = c.opted_in - need.allowed_opt_in
        if extra:
            problems.append(
                f"{c.kind.lower()} {mask(c.identity)} is opted in for marketing at {sorted(extra)} where a member "
                "that held it was not"
            )
        if need.transactional_opt_out and not c.transactional_opt_out:
            problems.append(
                f"{c.kind.lower()} {mask(c.identity)} lacks the transactional opt-out "
                f"{', '.join(need.opted_out_by or need.held_by)} had"
            )
    return problems


@dataclass(frozen=True, slots=True)
class ConsentNeeds:
    """What writing the survivor's consent takes, from a given primary.

    ``opt_out_phones``: E.164 numbers to send to ``campaigns/opt_out`` (the primary is opted in for
    marketing somewhere a member holding the number was not). ``uncarriable``: stricter consents the
    published API cannot write onto this primary; the merge must not run onto it.
    """

    opt_out_phones: tuple[str, ...] = ()
    uncarriable: tuple[str, ...] = field(default_factory=tuple)


def needs_for(
    required: Mapping[str, Requirement],
    primary: Iterable[ChannelConsent],
    added: Iterable[tuple[str, str]] = (),
) -> ConsentNeeds:
    """What must be done so that the primary satisfies ``required``.

    ``added`` lists ``(kind, identity)`` of channels the merge will add to the primary: a new channel
    starts with no marketing opt-in (the product never assumes consent) and no transactional opt-out;
    one the primary already holds adds nothing. Every channel of the primary is judged, so a number the
    primary holds in two spellings is judged in both (``violations`` judges each of them too).
    ``campaigns/opt_out`` takes an E.164 number: a phone identity that is not one (a number Podium
    could not parse) cannot have its marketing consent withdrawn that way.
    """
    opt_out: list[str] = []
    uncarriable: list[str] = []
    channels = [(c.kind, c.identity, c.opted_in, c.transactional_opt_out) for c in primary]
    held = {identity for _kind, identity, _in, _out in channels}
    channels += [(kind, identity, frozenset(), False) for kind, identity in added if identity not in held]
    for kind, identity, opted_in, transactional in channels:
        need = required.get(identity)
        if need is None:
            continue
        if opted_in - need.allowed_opt_in:
            if kind == PHONE and identity.startswith("+"):
                opt_out.append(identity)
            elif kind == PHONE:
                uncarriable.append(
                    f"the phone {mask(identity)} may not receive marketing at some locations (held by "
                    f"{', '.join(need.held_by)}), and it is not a number Podium's published API can opt out"
                )
            else:
                uncarriable.append(
                    f"the email {mask(identity)} may not receive marketing at some locations (held by "
                    f"{', '.join(need.held_by)}), and Podium's published API cannot withdraw an email's marketing "
                    "consent"
                )
        if need.transactional_opt_out and not transactional:
            uncarriable.append(
                f"the {kind.lower()} {mask(identity)} opted out of transactional messages on "
                f"{', '.join(need.opted_out_by or need.held_by)}, and Podium's published API cannot set that "
                "opt-out on another contact"
            )
    return ConsentNeeds(tuple(sorted(set(opt_out))), tuple(dict.fromkeys(uncarriable)))


def mask(identity: str) -> str:
    """A number or address with most of it hidden, for messages and logs (``+61•••••••678``)."""
    if "@" in identity:
        local, _, domain = identity.partition("@")
        return (local[:1] + "•••@" + domain) if local else "•••@" + domain
    if len(identity) <= 4:
        return "•" * len(identity)
    return identity[:3] + "•" * max(len(identity) - 6, 1) + identity[-3:]
