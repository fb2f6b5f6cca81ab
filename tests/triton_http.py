"""tritonclient.http clients that are closed and collected on the thread that made them."""

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import tritonclient.http as triton


@contextmanager
def triton_http_client(address: str) -> Iterator[triton.InferenceServerClient]:
    """A client closed on exit; collected at once, since its `__del__` joins a gevent pool that
    raises when a garbage collection happens to run on another thread (a server's)."""
    client = triton.InferenceServerClient(address)
    try:
        yield client
    finally:
        client.close()
        del client
        gc.collect()
