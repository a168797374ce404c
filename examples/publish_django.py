"""Publish from a Django view (synchronous code, several threads).

One `Publisher` per process, made on first use and shared by every thread
(it is thread-safe and keeps a pool of keep-alive connections); the key and
the URL come from the environment (ENGINE_API_KEY, ENGINE_API_URL).  In a
Django project, put `post_message` in a views module and the route in its
urls.py:

    urlpatterns = [path("rooms/<str:room>/messages", views.post_message)]

The same publisher serves Celery tasks and management commands.
"""

from __future__ import annotations

import json
import os
import threading

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from engine.client import ApiError, Publisher

_publisher: Publisher | None = None
_lock = threading.Lock()


def publisher() -> Publisher:
    global _publisher
    with _lock:
        if _publisher is None:
            url = os.environ.get("ENGINE_API_URL", "http://127.0.0.1:8080/api")
            _publisher = Publisher(url, os.environ["ENGINE_API_KEY"])
        return _publisher


@csrf_exempt  # (an API route called by the page's own script; keep CSRF in a real app)
@require_POST
def post_message(request: HttpRequest, room: str) -> JsonResponse:
    try:
        message = json.loads(request.body)
        data = {"user": str(message["user"]), "text": str(message["text"])}
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": "expected {user, text}"}, status=400)
    try:
        publisher().publish(f"/chat/{room}", data)
    except ApiError as error:
        return JsonResponse({"error": error.message}, status=502)
    return JsonResponse({"published": f"/chat/{room}"})


urlpatterns = [path("rooms/<str:room>/messages", post_message)]
