"""What every view module shares: the sign-in guard that understands htmx, pagination, small helpers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.decorators import login_required as django_login_required
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, QueryDict
from django.http.response import HttpResponseBase
from django.utils.functional import cached_property

from dedup.models import MergeOperation

# Merges that need a person now: the opt-outs did not hold, or the state cannot be reconciled.
INCIDENT_STATES = (MergeOperation.COMPLIANCE_FAILED, MergeOperation.UNRECONCILABLE)

ViewFunc = TypeVar("ViewFunc", bound=Callable[..., HttpResponseBase])


def login_required(view: ViewFunc) -> ViewFunc:
    """Django's ``login_required``, except that an htmx poll from an expired session redirects the page.

    Without this a progress partial would swap the sign-in form into the middle of the dashboard.
    """
    guarded = django_login_required(view)

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not request.user.is_authenticated and is_htmx(request):
            response = HttpResponse(status=401)
            target = request.headers.get("HX-Current-URL") or request.get_full_path()
            response["HX-Redirect"] = redirect_to_login(target, settings.LOGIN_URL)["Location"]
            return response
        return guarded(request, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


class _CountedPaginator(Paginator):
    """A paginator told its total, for lists whose count has a faster formulation than ``.count()``."""

    def __init__(self, object_list: QuerySet[Any] | Sequence[Any], per_page: int, count: int) -> None:
        super().__init__(object_list, per_page)
        self._known_count = count

    @cached_property
    def count(self) -> int:
        return self._known_count


def paginate(
    request: HttpRequest, queryset: QuerySet[Any] | Sequence[Any], per_page: int, count: int | None = None
) -> Page[Any]:
    """The requested page; an out-of-range or mangled page number shows the nearest real page."""
    paginator = Paginator(queryset, per_page) if count is None else _CountedPaginator(queryset, per_page, count)
    return paginator.get_page(request.GET.get("page"))


def query_without_page(params: QueryDict) -> str:
    """The current filters as a query string, for page links that keep them."""
    pairs = [(k, v) for k, values in params.lists() if k not in {"page", "format"} for v in values if v != ""]
    return urlencode(pairs)
