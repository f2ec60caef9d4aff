"""Shared plumbing for the tenant operations commands: `--json` output and the error mapping.

Commands stay thin: parse arguments, call one service, print. A `GatewayError` raised by
a service becomes a `CommandError`, so bad input exits non-zero with the service's message.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email

from gateway_project.errors import GatewayError


def email_argument(value: str) -> str:
    """argparse type: a syntactically valid e-mail address (the API's serializer checks the same)."""
    value = value.strip()
    try:
        validate_email(value)
    except ValidationError:
        raise ValueError(value) from None
    return value


email_argument.__name__ = "e-mail address"  # argparse names the type in its error message


class GatewayCommand(BaseCommand):
    """A command that maps service errors to `CommandError` and can print one JSON object."""

    json_option = True

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        if self.json_option:
            parser.add_argument(
                "--json", action="store_true", dest="json",
                help="Print exactly one JSON object on stdout instead of text (for scripts).",
            )
        return parser

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = self.run(**options)
        except GatewayError as exc:
            raise CommandError(exc.message) from exc
        if options.get("json"):
            self.stdout.write(json.dumps(result, default=str, sort_keys=True))
        else:
            self.stdout.write(self.style.SUCCESS(self.describe(result)))

    def run(self, **options: Any) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self, result: dict[str, Any]) -> str:  # pragma: no cover - abstract
        raise NotImplementedError
