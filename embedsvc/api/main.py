"""The API's router list: every route module contributes its own APIRouter; access rules are set here.

Jobs change state (they make the server read its disks): they need the API token whenever one is
configured. Reading routes need it only when the operator asks (``api_token_for_search``); health,
readiness and metrics stay open for probes.
"""

from fastapi import APIRouter, Depends

from embedsvc.api.deps import require_token, require_token_to_read
from embedsvc.api.routes import evaluation, health, images, indexes, jobs, maps, metrics, models, search

_read = [Depends(require_token_to_read)]

api_router = APIRouter()
api_router.include_router(search.router, dependencies=_read)
api_router.include_router(images.router, dependencies=_read)
api_router.include_router(indexes.router, dependencies=_read)
api_router.include_router(jobs.router, dependencies=[Depends(require_token)])
api_router.include_router(evaluation.router, dependencies=_read)
api_router.include_router(maps.router, dependencies=_read)
api_router.include_router(models.router, dependencies=_read)
api_router.include_router(health.router)
api_router.include_router(metrics.router)
