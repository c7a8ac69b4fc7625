"""`serve --ray` fits the replicas and the ingress to what Ray has: by default they share a local
instance's CPUs; asking for more than the cluster has is refused at once, with the numbers and the flag to
change, instead of Serve waiting forever to schedule replicas that can never fit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="ray is not installed (pip install '.[ray]'): Ray Serve tests skipped")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed: Ray Serve tests skipped")

from stable_audio_service.serving.ray import RESOURCE_UNIT, DoesNotFit, fit_resources  # noqa: E402

from .ray_harness import REPLICAS  # noqa: E402

CLI_TIMEOUT_S = 300  # a subprocess that starts (or joins) Ray on a busy 2-core machine; refusal comes right after


# -- the arithmetic, without Ray ---------------------------------------------------------------------------
def test_default_shares_split_a_small_machine_between_replicas_and_ingress():
    plan = fit_resources(2, 0, 2)  # `serve --ray --replicas 2` on 2 cores: the case of the issue
    assert (plan.replica_cpus, plan.ingress_cpus, plan.replica_gpus) == (0.9, 0.2, 0.0)
    assert plan.cpus == 2.0
    one = fit_resources(2, 0, 1)
    assert (one.replica_cpus, one.ingress_cpus) == (1.8, 0.2)
    big = fit_resources(16, 0, 3)  # the ingress never asks for more than 0.5
    assert big.ingress_cpus == 0.5 and big.replica_cpus == 5.1666 and big.cpus <= 16


@pytest.mark.parametrize("cpus", [0.5, 1, 2, 3, 4, 7, 16, 96])
@pytest.mark.parametrize("replicas", [1, 2, 3, 7, 8, 12])
def test_default_shares_always_fit_in_rays_units(cpus: float, replicas: int):
    """Ray truncates requests to 1/10000: the shares are whole units whose sum never exceeds the cluster."""
    plan = fit_resources(cpus, 0, replicas)
    for x in (plan.replica_cpus, plan.ingress_cpus):
        assert x > 0 and abs(x * RESOURCE_UNIT - round(x * RESOURCE_UNIT)) < 1e-6
    assert plan.replicas * plan.replica_cpus + plan.ingress_cpus <= cpus + 1e-9


def test_on_a_cluster_the_default_is_one_cpu_per_replica_at_most():
    """A total over many machines says nothing about what one machine holds: no default beyond 1 CPU there."""
    assert fit_resources(64, 8, 2, max_default_cpus=1.0).replica_cpus == 1.0
    assert fit_resources(2, 0, 2, max_default_cpus=1.0).replica_cpus == 0.9  # smaller than that: shared


def test_explicit_num_cpus_is_honoured_and_the_ingress_takes_what_is_left():
    plan = fit_resources(2, 0, 2, num_cpus=1)
    assert (plan.replica_cpus, plan.ingress_cpus) == (1, 0.0)
    plan = fit_resources(2, 0, 2, num_cpus=0.95)
    assert (plan.replica_cpus, plan.ingress_cpus) == (0.95, 0.1)
    plan = fit_resources(8, 0, 2, num_cpus=3)
    assert (plan.replica_cpus, plan.ingress_cpus) == (3, 0.5)


def test_too_many_cpus_are_refused_with_the_numbers_and_the_flags():
    with pytest.raises(DoesNotFit) as exc:
        fit_resources(2, 0, 8, num_cpus=1)
    assert str(exc.value) == (
        "8 model replicas × 1 CPU + the ingress's 0.2 CPU = 8.2 CPUs, but the Ray cluster has 2 CPUs:"
        " lower --replicas, or --num-cpus to 0.225 or less for 8 replicas"
    )
    with pytest.raises(DoesNotFit, match=r"2 model replicas × 1 CPU \+ the ingress's 0.5 CPU = 2.5 CPUs"):
        fit_resources(2, 0, 2, num_cpus=1, ingress_cpus=0.5)  # an explicit ingress share is honoured too
    with pytest.raises(DoesNotFit, match=r"50000 model replicas cannot share 2 CPUs .*use fewer --replicas"):
        fit_resources(2, 0, 50_000)  # a share under Ray's 1/10000 would be no CPU at all


def test_gpus_one_per_replica_by_default_and_refused_when_they_do_not_fit():
    assert fit_resources(8, 2, 2).replica_gpus == 1.0
    assert fit_resources(8, 0, 2).replica_gpus == 0.0
    assert fit_resources(8, 1, 2, num_gpus=0.5).gpus == 1.0
    with pytest.raises(DoesNotFit) as exc:
        fit_resources(8, 1, 2)
    assert str(exc.value) == (
        "2 model replicas × 1 GPU = 2 GPUs, but the Ray cluster has 1 GPU: lower --replicas, or --num-gpus to"
        " 0.5 or less for 2 replicas (replicas that share a GPU each load their own copy of the model)"
    )
    with pytest.raises(DoesNotFit, match=r"--num-gpus to 1 or less"):  # Ray takes whole GPUs above one
        fit_resources(8, 3, 2, num_gpus=2)
    with pytest.raises(DoesNotFit, match=r"has 0 GPUs: lower --replicas, or --num-gpus 0 to run on CPUs"):
        fit_resources(8, 0, 1, num_gpus=1)


# -- Ray as `serve --ray` starts it ---------------------------------------------------------------------
def test_replicas_at_the_default_shares_are_served_on_this_machines_cpus(ray_client):
    """The session's backend is `serve --ray --replicas 2` as the CLI starts it: Ray counts this machine's own
    CPUs (2 here: the shares the issue's 1 CPU per replica + 0.5 could not fit), the two replicas and the
    ingress hold exactly the default shares of them, and both replicas answer."""
    import ray

    cpus = ray.cluster_resources()["CPU"]
    assert cpus <= (os.cpu_count() or 1)  # not inflated, as the harness once did with num_cpus=4
    plan = fit_resources(cpus, ray.cluster_resources().get("GPU", 0.0), REPLICAS)
    held = cpus - ray.available_resources().get("CPU", 0.0)
    assert held == pytest.approx(plan.cpus, abs=1e-4)
    assert ray_client.get("/ready").json()["replicas"] == REPLICAS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_ray(tiny_dir: Path, *args: str, ray_address: str | None = None) -> subprocess.CompletedProcess:
    """`stable-audio-service serve --ray ...` as its own process, so that its exit status is the real one. On
    timeout (it did not refuse) its whole process group, Ray's processes included, is killed."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(STABLE_AUDIO_HOST="127.0.0.1", STABLE_AUDIO_PORT=str(_free_port()), RAY_USAGE_STATS_ENABLED="0")
    if ray_address is not None:
        env["RAY_ADDRESS"] = ray_address
    cmd = [sys.executable, "-c", "from stable_audio_service.cli import main; main()", "serve", "--ray"]
    cmd += ["--model", str(tiny_dir), *args]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"serve --ray {' '.join(args)} was not refused: it ran on\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _one_error(proc: subprocess.CompletedProcess) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, (proc.returncode, proc.stderr[-3000:])
    return errors[0]


def test_replicas_that_cannot_fit_a_local_instance_are_refused(tiny_dir: Path):
    """`--replicas 8 --num-cpus 1` on this 2-core machine (more replicas than CPUs on any machine): refused
    right after Ray starts, exit status 2, one message with the arithmetic and the flags to change."""
    replicas = max(8, (os.cpu_count() or 1) + 1)
    proc = _serve_ray(tiny_dir, "--replicas", str(replicas), "--num-cpus", "1")
    error = _one_error(proc)
    assert f"{replicas} model replicas × 1 CPU + the ingress's" in error
    assert "but the Ray cluster has" in error and "lower --replicas, or --num-cpus to" in error


def test_replicas_that_cannot_fit_an_existing_cluster_are_refused(ray_client, tiny_dir: Path):
    """RAY_ADDRESS names a cluster (the session's) too small for what is asked: refused before deploying,
    and the cluster's own application is untouched."""
    import ray

    cpus = ray.cluster_resources()["CPU"]
    address = ray.get_runtime_context().gcs_address
    proc = _serve_ray(tiny_dir, "--replicas", "2", "--num-cpus", f"{cpus:g}", ray_address=address)
    error = _one_error(proc)
    assert f"2 model replicas × {cpus:g} CPU" in error and f"the Ray cluster has {cpus:g} CPU" in error
    assert ray_client.get("/ready").json()["replicas"] == REPLICAS
