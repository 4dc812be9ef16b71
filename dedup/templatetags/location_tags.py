"""Template tags about locations: the admins' banner for locations that need a region."""

from __future__ import annotations

from typing import Any

from django import template

from dedup import access
from dedup.models import Location, Policy

register = template.Library()


@register.inclusion_tag("locations/_banner.html", takes_context=True)
def locations_needing_region(context: dict[str, Any]) -> dict[str, Any]:
    """For admins: the locations neither Podium nor an admin gave a region (nothing for anyone else)."""
    request = context.get("request")
    if request is None or not access.is_admin(request.user):
        return {"locations": []}
    locations = list(Location.objects.filter(podium_country="", region_override="").order_by("name"))
    return {"locations": locations, "default_region": Policy.current().default_region if locations else ""}


@register.filter
def is_admin(user: Any) -> bool:
    """Whether the user is an admin (for links to admin-only pages)."""
    return access.is_admin(user)
