"""The API's router list: every route module contributes its own APIRouter."""

from fastapi import APIRouter

from embedsvc.api.routes import evaluation, health, images, indexes, jobs, metrics, models, search

api_router = APIRouter()
api_router.include_router(search.router)
api_router.include_router(images.router)
api_router.include_router(indexes.router)
api_router.include_router(jobs.router)
api_router.include_router(evaluation.router)
api_router.include_router(models.router)
api_router.include_router(health.router)
api_router.include_router(metrics.router)
