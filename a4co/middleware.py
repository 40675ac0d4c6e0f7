"""Project middleware."""
from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse


class RequestBodyLimitMiddleware:
    """Answer 413 to a request whose declared body exceeds DATA_UPLOAD_MAX_MEMORY_SIZE, before
    anything reads it.

    Django enforces that setting only when `request.body` or `request.POST` is read; DRF's JSON
    parser reads the raw stream instead, so without this a client could make a worker parse a
    body of any size. A body without Content-Length (chunked) reads as empty in Django's WSGI
    handler, so the header is the whole story. A malformed Content-Length is a 400.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(raw)
        except ValueError:
            return JsonResponse({"detail": "Malformed Content-Length header.", "code": "bad_request"}, status=400)
        if limit is not None and length > limit:
            return JsonResponse({"detail": f"Request body too large: at most {limit} bytes.",
                                 "code": "request_too_large"}, status=413)
        return self.get_response(request)
