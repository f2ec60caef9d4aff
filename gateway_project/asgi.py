import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

django_application = get_asgi_application()  # sets Django up: import the rest after it

from django.conf import settings  # noqa: E402
from django.core.cache import caches  # noqa: E402

from llm.asgi import MeteredApi  # noqa: E402
from llm.providers.registry import provider_sdks_import  # noqa: E402

# One cache client (and so one Redis connection pool) per process. Django keeps cache clients in
# a context-local: a request task that starts without one builds its own, with a new pool, and
# opens a new Redis connection for every request. Created here, during the server's start-up,
# it is in the context every request task inherits (and that db_step threads copy). Sharing it
# between threads is safe for the backends configured here (Redis: a thread-safe pool; files).
for alias in settings.CACHES:
    caches[alias]

# Imported lazily by the first call, the provider SDKs would hold the event loop for seconds (the
# openai package alone takes about 3 s to import here) while every other request waits.
provider_sdks_import()

# The metered API (POST /v1/{TASK}/chat/completions, GET /v1/{TASK}/models) is served by a small
# pure-ASGI app on the event loop, with the same endpoint code as the Django views; everything
# else goes through Django. Static files (admin, console) are served here for the embedded
# default; production may put a CDN or reverse proxy in front of /static/.
application = MeteredApi(ASGIStaticFilesHandler(django_application))
