import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

# Every middleware is async-capable, so metered calls stay on the event loop (no thread per call).
# Static files (admin, console) are served here for the embedded default; production may put a
# CDN or reverse proxy in front of /static/.
application = ASGIStaticFilesHandler(get_asgi_application())
