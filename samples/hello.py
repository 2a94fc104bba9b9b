"""A hello-world HTTP service: ``GET /hello/<name>`` answers with a greeting.

Run it with ``python -m patron samples.hello`` and try
``curl localhost:50000/hello/world``; ``/ready``, ``/alive`` and ``/metrics`` are served too.
"""

from patron import Service
from patron.http import Request, Route


def hello(request: Request, name: str) -> str:
    return f"Hello, {name}!\n"


service = Service("hello", "1.0.0", routes=[Route("GET", "/hello/<name>", hello)])
