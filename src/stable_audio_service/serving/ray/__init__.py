"""The same HTTP API over many model replicas and machines, on Ray Serve (`serve --ray`).

Two deployments:

- `StableAudioModel` (replica.py), N replicas (or autoscaled between a min and a max): each owns one `Engine`
  behind a `LocalEngineClient`, so the model's memory, the bounded queue and dynamic batching stay inside a
  replica, exactly as in one process.
- `StableAudioIngress` (ingress.py): the FastAPI app of `api/app.py`, unchanged, whose backend is a
  `RayEngineClient` (client.py) instead of an engine in this process: the routes see the same `EngineClient`
  protocol either way.

A job id names the replica that owns it, and a Serve request router sends every call about a job there
(router.py). What travels between them is the jobs' own views and events and a few wire types (wire.py); the
resources each deployment asks for are fitted to the cluster (resources.py); launch.py builds and runs the
application. `/metrics` merges every replica's figures under a `replica` label (metrics.py); `/ready` reports
`"replicas"`: the model replicas that answer.
"""

from .launch import APP_NAME, INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT, app_builder, build, serve_forever, start, stop
from .resources import RESOURCE_UNIT, DoesNotFit, RayOptions, ResourcePlan, fit_resources, plan_resources
from .wire import owner_of

__all__ = [
    "APP_NAME",
    "INGRESS_DEPLOYMENT",
    "MODEL_DEPLOYMENT",
    "RESOURCE_UNIT",
    "DoesNotFit",
    "RayOptions",
    "ResourcePlan",
    "app_builder",
    "build",
    "fit_resources",
    "owner_of",
    "plan_resources",
    "serve_forever",
    "start",
    "stop",
]
