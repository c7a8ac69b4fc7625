"""Which model replica gets a call: the one a job id names, else Serve's power-of-two choice.

No registry actor maps jobs to replicas: it would be one more thing to keep alive and consistent, every read
would cost an extra hop, and it could not save a job anyway, since the job's queue slot, progress and audio live
in its replica's memory and die with it. The id carries everything (`<replica id>.<32 hex>`, wire.py); a dead
owner means the job is gone (404), which a registry could only have said more slowly.
"""

from __future__ import annotations

import random
from typing import Any

from ray.serve.request_router import FIFOMixin, RequestRouter

from .wire import owner_of


class JobOwnerRouter(FIFOMixin, RequestRouter):
    """Serve request router: a call whose first argument is a job id (or a replica id) goes to that replica;
    anything else, or an owner that is gone, gets Serve's power-of-two choice on ongoing requests (the
    replica then answers for itself: a job it does not own is "no such job")."""

    async def choose_replicas(self, candidate_replicas: list, pending_request: Any = None) -> list[list]:
        args = getattr(pending_request, "args", None) or []
        owner = owner_of(args[0]) if args else None
        if owner is not None:
            for replica in candidate_replicas:
                if replica.replica_id.unique_id == owner:
                    return [[replica]]
        if len(candidate_replicas) <= 2:
            return [list(candidate_replicas)]
        return [random.sample(list(candidate_replicas), 2)]
