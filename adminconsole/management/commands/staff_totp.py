"""Two-factor devices of staff: `staff_totp enroll <username> [--replace]` prints the otpauth:// URI and the
secret once (scan or type them into an authenticator app), `staff_totp remove <username>`, `staff_totp list`."""

from __future__ import annotations

import base64

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django_otp.plugins.otp_totp.models import TOTPDevice

from adminconsole.otp import EnrolmentError, staff_totp_enroll, staff_totp_remove


class Command(BaseCommand):
    help = "Enrol, remove or list the TOTP (authenticator app) devices of staff users."

    def add_arguments(self, parser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        enroll = actions.add_parser("enroll", help="Give a staff user a TOTP device; prints its secret once.")
        enroll.add_argument("username")
        enroll.add_argument("--name", default="authenticator", help="A label for the device.")
        enroll.add_argument("--replace", action="store_true", help="Replace the user's existing device.")
        remove = actions.add_parser("remove", help="Delete a user's devices (they log in without a code again,"
                                                   " unless STAFF_REQUIRE_2FA).")
        remove.add_argument("username")
        actions.add_parser("list", help="Staff users with a device.")

    def _user(self, username: str):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        return user

    def handle(self, *args, **options) -> None:
        action = options["action"]
        if action == "list":
            for device in TOTPDevice.objects.select_related("user").order_by("user__username", "id"):
                used = f"last used {device.last_used_at:%Y-%m-%d %H:%M}" if device.last_used_at else "never used"
                state = "confirmed" if device.confirmed else "unconfirmed"
                self.stdout.write(f"{device.user.get_username()}\t{device.name}\t{state}\t{used}")
            return
        user = self._user(options["username"])
        if action == "remove":
            count = staff_totp_remove(user=user)
            self.stdout.write(f"Removed {count} device(s) of {user.get_username()}.")
            return
        try:
            device = staff_totp_enroll(user=user, name=options["name"], replace=options["replace"])
        except EnrolmentError as exc:
            raise CommandError(str(exc))
        secret = base64.b32encode(device.bin_key).decode().rstrip("=")
        self.stdout.write(
            f"TOTP device enrolled for {user.get_username()}. This is shown once: add it to the authenticator app"
            f" now (scan the URI as a QR code, e.g. `qrencode -t ansiutf8 '<uri>'`, or type the secret).\n"
            f"  otpauth URI: {device.config_url}\n"
            f"  secret (base32): {secret}\n"
            f"From now on {user.get_username()} logs in with the password and the app's 6-digit code."
        )
