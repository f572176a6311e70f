"""A local web viewer of `.nervi` archives: frames decoded on the fly, batched, cached, prefetched.

`serve(paths, host=, port=)` runs it (the `nervi-hpc view` verb); `Viewer` + `make_server` /
`serve_in_thread` embed it (tests, benchmarks). The page (static/) needs no build step and no
network beyond the viewer itself.
"""

from .server import DEFAULT_PORT, Viewer, make_server, serve, serve_in_thread

__all__ = ["DEFAULT_PORT", "Viewer", "make_server", "serve", "serve_in_thread"]
