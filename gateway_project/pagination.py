"""Page-number pagination whose `page` is validated: a malformed page is a 400, a page past the end a 404."""

from __future__ import annotations

import re
from typing import Any

from rest_framework import pagination, serializers
from rest_framework.request import Request

_PAGE = re.compile(r"[0-9]{1,18}")


class PageNumberPagination(pagination.PageNumberPagination):
    def get_page_number(self, request: Request, paginator: Any) -> Any:
        raw = request.query_params.get(self.page_query_param) or "1"
        if raw in self.last_page_strings:
            return paginator.num_pages
        # DRF would answer 'abc', '0' or '-1' with a 404 "Invalid page": that is bad input, not a missing page.
        if not _PAGE.fullmatch(raw) or int(raw) < 1:
            raise serializers.ValidationError({self.page_query_param: ["A page number is a whole number from 1."]})
        return int(raw)


def paginated(item: type[serializers.Serializer], name: str) -> serializers.Serializer:
    """The OpenAPI shape of a page of `item` rows as `PageNumberPagination` answers it."""
    return type(name, (serializers.Serializer,), {
        "count": serializers.IntegerField(),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": item(many=True),
    })()
