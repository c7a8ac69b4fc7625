"""Building the Serve application and running it: `serve --ray` (`serve_forever`), `serve deploy` (`app_builder`),
and the tests (`start`, `stop`)."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from typing import Any

from ... import telemetry
from ...config import Settings
from .ingress import StableAudioIngress
from .replica import StableAudioModel
from .resources import CLUSTER_REPLICA_CPUS, INGRESS_MAX_CPUS, DoesNotFit, RayOptions, counted, plan_resources
from .router import JobOwnerRouter

log = logging.getLogger("stable_audio_service.ray")

APP_NAME = "stable-audio"
MODEL_DEPLOYMENT = "StableAudioModel"
INGRESS_DEPLOYMENT = "StableAudioIngress"
STOP_MARGIN_S = 30.0  # beyond the replicas' grace period, how long SIGTERM waits for Serve and Ray to stop
# Environment that travels with the replicas to other machines: telemetry, the Hugging Face cache and token,
# service settings, torch switches. Never the visible-devices variables: Ray assigns each replica its GPU.
FORWARDED_ENV = ("OTEL_", "HF_", "STABLE_AUDIO_", "TORCH_", "PYTORCH_")


def _forwarded_env() -> dict[str, str]:
    """Telemetry, Hugging Face and service settings travel to replicas on other machines with them."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


def build(settings: Settings, options: RayOptions) -> Any:
    """The Serve application: the ingress bound to the model deployment."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    config = settings.model_dump()
    replica_config = {**config, "api_key": None}  # only the ingress checks the token
    env = _forwarded_env()
    runtime_env = {"env_vars": env} if env else None
    num_gpus = options.num_gpus
    if num_gpus is None:
        import ray

        num_gpus = 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    num_cpus = CLUSTER_REPLICA_CPUS if options.num_cpus is None else options.num_cpus  # `start` fits them
    ingress_cpus = INGRESS_MAX_CPUS if options.ingress_num_cpus is None else options.ingress_num_cpus
    model_actor: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    ingress_actor: dict[str, Any] = {"num_cpus": ingress_cpus}
    if runtime_env:
        model_actor["runtime_env"] = ingress_actor["runtime_env"] = runtime_env
    grace = settings.shutdown_grace_s + 10
    scaling: dict[str, Any]
    if options.autoscaling:
        scaling = {
            "autoscaling_config": {
                "min_replicas": options.min_replicas if options.min_replicas is not None else 1,
                "max_replicas": options.max_replicas,
                "initial_replicas": max(1, options.min_replicas or 1),
                "target_ongoing_requests": options.target_ongoing_requests or float(settings.max_batch_size),
            }
        }
    else:
        scaling = {"num_replicas": options.replicas}
    model = serve.deployment(
        name=MODEL_DEPLOYMENT,
        ray_actor_options=model_actor,
        max_ongoing_requests=options.max_ongoing_requests,
        request_router_config=RequestRouterConfig(request_router_class=JobOwnerRouter),
        health_check_period_s=options.health_check_period_s,
        graceful_shutdown_timeout_s=grace,
        **scaling,
    )(StableAudioModel)
    ingress = serve.deployment(
        name=INGRESS_DEPLOYMENT,
        num_replicas=options.ingress_replicas,
        ray_actor_options=ingress_actor,
        max_ongoing_requests=options.max_ongoing_requests,
        graceful_shutdown_timeout_s=grace,
    )(serve.ingress()(StableAudioIngress))
    return ingress.bind(model.bind(replica_config), config)


def app_builder(args: dict[str, Any]) -> Any:
    """For `serve deploy` / `serve run` (deploy/ray/serve_config.yaml): `args` holds Settings fields (model,
    queue_size, ...) and RayOptions fields (replicas, num_gpus, max_replicas, ...); the rest comes from the
    environment, as for `serve`."""
    option_names = {f.name for f in dataclasses.fields(RayOptions)}
    unknown = set(args) - option_names - set(Settings.model_fields)
    if unknown:
        raise ValueError(f"unknown application args: {sorted(unknown)}")
    settings = Settings(**{k: v for k, v in args.items() if k in Settings.model_fields})
    return build(settings, RayOptions(**{k: v for k, v in args.items() if k in option_names}))


def start(settings: Settings, options: RayOptions, **ray_init: Any) -> bool:
    """Deploy on the cluster in RAY_ADDRESS, or on a new local Ray instance; returns True when it started Ray
    here (then `stop` shuts it down). Blocks until every replica has loaded the model. Raises `DoesNotFit`
    instead, before deploying anything, when the replicas and the ingress cannot fit the cluster: Serve would
    wait for them forever (see `plan_resources`)."""
    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = initialized = False
    if not ray.is_initialized():
        ray.init(**ray_init)  # RAY_ADDRESS set: join that cluster; unset: start a local instance
        initialized = True
        started = not os.environ.get("RAY_ADDRESS") and "address" not in ray_init
    try:
        plan = plan_resources(options, local=started)
    except DoesNotFit:
        if initialized:
            ray.shutdown()  # stops the instance started here; only disconnects from a cluster
        raise
    log.info(
        "Ray has %s and %s: each model replica asks for %s and %s, the ingress for %s",
        counted(plan.cluster_cpus, "CPU"),
        counted(plan.cluster_gpus, "GPU"),
        counted(plan.replica_cpus, "CPU"),
        counted(plan.replica_gpus, "GPU"),
        counted(plan.ingress_cpus, "CPU"),
    )
    fitted = dataclasses.replace(
        options, num_cpus=plan.replica_cpus, num_gpus=plan.replica_gpus, ingress_num_cpus=plan.ingress_cpus
    )
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build(settings, fitted), name=APP_NAME, route_prefix="/", blocking=False)
    return started


def stop(started_ray: bool) -> None:
    """Delete the application (replicas drain: queued and running work gets the grace period), then Serve and
    Ray too when they were started here."""
    import ray
    from ray import serve

    try:
        serve.delete(APP_NAME)
    finally:
        if started_ray:
            serve.shutdown()
            ray.shutdown()


def serve_forever(settings: Settings, options: RayOptions) -> None:
    """`stable-audio-service serve --ray`: deploy, serve until SIGTERM/SIGINT, shut down cleanly (exit 0)."""
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping the Ray Serve application", signal.Signals(signum).name)
        stopping.set()

    started = start(settings, options)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    scale = (
        f"{options.min_replicas or 1}..{options.max_replicas} autoscaled"
        if options.autoscaling
        else str(options.replicas)
    )
    log.info("serving on http://%s:%d through Ray Serve: %s model replicas", settings.host, settings.port, scale)
    while not stopping.wait(1.0):
        pass
    # Bounded: when the same signal also reached Ray's own processes (a terminal's Ctrl-C, systemd's default
    # KillMode=control-group), Ray would wait a minute for a GCS that is gone.
    stopper = threading.Thread(target=stop, args=(started,), name="serve-stop", daemon=True)
    stopper.start()
    stopper.join(settings.shutdown_grace_s + STOP_MARGIN_S)
    telemetry.shutdown()
    if stopper.is_alive():
        log.error("Ray did not stop in time (were its processes signalled too? use systemd KillMode=mixed)")
        os._exit(1)
    log.info("stopped cleanly")
