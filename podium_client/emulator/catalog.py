"""The organization's contact tags (`/v4/contact_tags`) and attribute definitions (`/v4/contact_attributes`).

Contacts embed what they show of a tag (`uid`, `label`, `description`) and of an attribute (`uid`,
`label`, `value`, `dataType`, `ownerResource`); the definitions live here. Loading contacts rebuilds the
definitions from what they embed. The caller (EmulatorState) holds the lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from podium_client.emulator import shapes
from podium_client.emulator.errors import invalid_values, not_found

if TYPE_CHECKING:
    from podium_client.emulator.state import EmulatorState

#: The owner uid of PRODUCT-level attributes: the application the token belongs to.
APPLICATION_UID = shapes.stable_uid("podium-emulator", "application")


class Catalog:
    """Tag and attribute definitions of one organization."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state
        self.tags: dict[str, dict[str, Any]] = {}
        self.attributes: dict[str, dict[str, Any]] = {}

    def _stamp(self) -> str:
        return shapes.fmt_us(self._state._tick())

    def _org(self) -> dict[str, str]:
        return {"uid": self._state.organization["uid"]}

    # --- learning from contacts (load, add_contact) ------------------------------------------------

    def learn(self, contact: Mapping[str, Any]) -> None:
        """Add the definitions of tags and attributes a contact shows that the catalog lacks."""
        stamp = contact["createdAt"]
        for tag in contact["tags"]:
            if tag["uid"] not in self.tags:
                self.tags[tag["uid"]] = {
                    "uid": tag["uid"], "label": tag["label"], "description": tag["description"],
                    "organization": {"uid": contact["organization"]["uid"]}, "createdAt": stamp, "updatedAt": stamp,
                }  # fmt: skip
        for attribute in contact["attributes"]:
            if attribute["uid"] not in self.attributes:
                data_type = (
                    attribute["dataType"]
                    if attribute["dataType"] in shapes.ATTRIBUTE_DATA_TYPES
                    else "STRING"
                )
                owner = attribute["ownerResource"]
                self.attributes[attribute["uid"]] = {
                    "uid": attribute["uid"], "label": attribute["label"], "dataType": data_type,
                    "isEncrypted": True,
                    "ownerResource": {"type": owner.get("type") or "ORGANIZATION", "uid": owner.get("uid")},
                    "createdAt": stamp, "updatedAt": stamp,
                }  # fmt: skip

    # --- tags ---------------------------------------------------------------------------------------

    def tag(self, uid: str) -> dict[str, Any]:
        """A tag definition; 404 resource_not_found when unknown."""
        tag = self.tags.get(uid)
        if tag is None:
            raise not_found("tag")
        return dict(tag)

    def contact_tag(self, uid: str, field: str | None = None) -> dict[str, Any]:
        """What a contact shows of tag `uid`; unknown: 400 naming `field` when given, else 404."""
        tag = self.tags.get(uid)
        if tag is None:
            if field:
                raise invalid_values(field, f"unknown tag {uid}")
            raise not_found("tag")
        return {"uid": tag["uid"], "label": tag["label"], "description": tag["description"]}

    def tag_for_label(self, label: str) -> dict[str, Any]:
        """The tag labelled `label` (any case), created when the organization has none."""
        for tag in self.tags.values():
            if (tag["label"] or "").lower() == label.lower():
                return tag
        return self.create_tag({"label": label, "description": None}, uid=shapes.stable_uid("tag", label))

    def create_tag(self, body: Mapping[str, Any], uid: str | None = None) -> dict[str, Any]:
        """`POST /v4/contact_tags`; a label the organization already has is 400 (our reading)."""
        label = body["label"]
        if any((t["label"] or "").lower() == label.lower() for t in self.tags.values()):
            raise invalid_values("label", "the organization already has a tag with this label")
        stamp = self._stamp()
        tag = {
            "uid": uid or self._state.new_uid(), "label": label, "description": body.get("description"),
            "organization": self._org(), "createdAt": stamp, "updatedAt": stamp,
        }  # fmt: skip
        self.tags[tag["uid"]] = tag
        return dict(tag)

    def update_tag(self, uid: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """`PATCH /v4/contact_tags/{uid}`; contacts showing the tag show the new label/description.

        Their `updatedAt` does not move (our reading: the contact did not change, the tag did).
        """
        tag = self.tags.get(uid)
        if tag is None:
            raise not_found("tag")
        label = body.get("label", tag["label"])
        if label != tag["label"] and any(
            (t["label"] or "").lower() == label.lower() for u, t in self.tags.items() if u != uid
        ):
            raise invalid_values("label", "the organization already has a tag with this label")
        tag.update({k: body[k] for k in ("label", "description") if k in body})
        tag["updatedAt"] = self._stamp()
        shown = {"uid": uid, "label": tag["label"], "description": tag["description"]}
        self._rewrite("tags", uid, lambda held: shown)
        return dict(tag)

    # --- attribute definitions ------------------------------------------------------------------------

    def attribute(self, uid: str) -> dict[str, Any]:
        """An attribute definition; 404 resource_not_found when unknown."""
        attribute = self.attributes.get(uid)
        if attribute is None:
            raise not_found("attribute")
        return dict(attribute)

    def contact_attribute(self, uid: str, value: Any, field: str | None = None) -> dict[str, Any]:
        """What a contact shows of attribute `uid` set to `value`; unknown: 400 naming `field`, else 404."""
        definition = self.attributes.get(uid)
        if definition is None:
            if field:
                raise invalid_values(field, f"unknown attribute {uid}")
            raise not_found("attribute")
        return {
            "uid": uid, "label": definition["label"], "value": value, "dataType": definition["dataType"],
            "ownerResource": dict(definition["ownerResource"]),
        }  # fmt: skip

    def attribute_for_label(self, label: str, data_type: str = "STRING") -> dict[str, Any]:
        """The attribute labelled `label` (any case), created when the organization has none."""
        for attribute in self.attributes.values():
            if attribute["label"].lower() == label.lower():
                return attribute
        body = {"label": label, "dataType": data_type, "ownerResourceType": "ORGANIZATION"}
        return self.create_attribute(body, uid=shapes.stable_uid("attribute", label))

    def create_attribute(self, body: Mapping[str, Any], uid: str | None = None) -> dict[str, Any]:
        """`POST /v4/contact_attributes`; a label the organization already has is 400 (our reading)."""
        if any(a["label"].lower() == body["label"].lower() for a in self.attributes.values()):
            raise invalid_values("label", "the organization already has an attribute with this label")
        stamp = self._stamp()
        attribute = {
            "uid": uid or self._state.new_uid(), "label": body["label"], "dataType": body["dataType"],
            "isEncrypted": body.get("isEncrypted", True), "ownerResource": self._owner(body["ownerResourceType"]),
            "createdAt": stamp, "updatedAt": stamp,
        }  # fmt: skip
        self.attributes[attribute["uid"]] = attribute
        return dict(attribute)

    def _owner(self, kind: str) -> dict[str, str]:
        return {
            "type": kind,
            "uid": APPLICATION_UID if kind == "PRODUCT" else self._state.organization["uid"],
        }

    def update_attribute(self, uid: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """`PATCH /v4/contact_attributes/{uid}`; contacts show the new label and data type (their
        `updatedAt` does not move, as for tags)."""
        attribute = self.attributes.get(uid)
        if attribute is None:
            raise not_found("attribute")
        for key in ("label", "dataType", "isEncrypted"):
            if key in body:
                attribute[key] = body[key]
        if "ownerResourceType" in body:
            attribute["ownerResource"] = self._owner(body["ownerResourceType"])
        attribute["updatedAt"] = self._stamp()

        def shown(held: dict[str, Any]) -> dict[str, Any]:
            return self.contact_attribute(uid, held["value"])

        self._rewrite("attributes", uid, shown)
        return dict(attribute)

    def delete_attribute(self, uid: str) -> dict[str, Any]:
        """`DELETE /v4/contact_attributes/{uid}`: the definition goes, and with it every contact's value
        (those contacts changed: their `updatedAt` moves and `contact.updated` is sent)."""
        attribute = self.attribute(uid)
        needle = uid.encode()
        state = self._state
        for rec in list(state.store):
            if needle in rec.raw:
                before, after = rec.data(), rec.data()
                after["attributes"] = [a for a in after["attributes"] if a["uid"] != uid]
                state.commit(rec, before, after)
        del self.attributes[uid]
        return attribute

    def _rewrite(self, key: str, uid: str, shown: Any) -> None:
        needle = uid.encode()
        for rec in self._state.store:
            if needle in rec.raw:
                contact = rec.data()
                items = contact[key]
                for i, held in enumerate(items):
                    if held["uid"] == uid:
                        items[i] = shown(held)
                rec.raw = shapes.dumps(contact).encode()
