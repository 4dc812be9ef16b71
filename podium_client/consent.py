"""The product's three opt-out flags, derived from Podium's per-channel consent model.

Podium keeps consent per channel: ``marketingOptedInLocationUids`` (where that phone or email may
receive marketing) and ``transactionalOptedOutAt``. The product summarizes a contact as three flags,
exactly as ``spec/podium-api.md`` defines them:

* ``marketing_opt_out``: some channel of the contact is not opted in for marketing at some location of
  the contact (``campaigns/opt_out`` empties a channel's opt-in list, so it is covered);
* ``sms_opt_out``: some PHONE channel has ``transactionalOptedOutAt``;
* ``email_opt_out``: some EMAIL channel has ``transactionalOptedOutAt``.

A contact in no location has no location to be opted in at: a channel of it counts as opted out when
its opt-in list is empty (the conservative reading; a product must never assume consent).
"""

from __future__ import annotations

from dataclasses import dataclass

from podium_client.types import EMAIL, PHONE, Channel, Contact


@dataclass(frozen=True, slots=True)
class ConsentFlags:
    """The three flags of one contact; True means the customer said no."""

    marketing_opt_out: bool = False
    sms_opt_out: bool = False
    email_opt_out: bool = False

    def to_wire(self) -> dict[str, bool]:
        """The flags under the names the product shows and audits."""
        return {
            "marketingOptOut": self.marketing_opt_out,
            "smsOptOut": self.sms_opt_out,
            "emailOptOut": self.email_opt_out,
        }


def channel_marketing_opted_out(channel: Channel, location_uids: tuple[str, ...]) -> bool:
    """True when the channel may not receive marketing at some location of its contact."""
    opted_in = channel.marketing_opted_in_location_uids
    if not location_uids:
        return not opted_in
    return any(loc not in opted_in for loc in location_uids)


def consent_flags(contact: Contact) -> ConsentFlags:
    """Derive the three flags of a contact from its channels' consent."""
    locations = contact.location_uids
    marketing = sms = email = False
    for channel in contact.channels:
        if not marketing and channel_marketing_opted_out(channel, locations):
            marketing = True
        if channel.transactional_opted_out_at is not None:
            if channel.type == PHONE:
                sms = True
            elif channel.type == EMAIL:
                email = True
    return ConsentFlags(marketing, sms, email)
