"""The HTTP edge: the ASGI app, the server that runs it, the webhook routes."""
