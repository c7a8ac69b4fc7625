"""Running the service as a process: `server` (uvicorn in this process, graceful SIGTERM and fatal exit) and
`ray` (the same app over model replicas on Ray Serve, `serve --ray`; needs the ray extra, so it is imported only
when asked for)."""

from .server import DRAIN_MARGIN_S, GracefulServer, run

__all__ = ["DRAIN_MARGIN_S", "GracefulServer", "run"]
