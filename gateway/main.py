"""uvicorn entry point: ``uvicorn --factory gateway.main:app_from_environment``.

The one factory that reads its settings from the ``MODELOPS_GATEWAY_*`` environment; the app
itself is built by :func:`gateway.app.create_app`, which takes them as an argument.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

from gateway.app import create_app
from gateway.settings import get_gateway_settings


def app_from_environment() -> FastAPI:
    """Build the app from ``MODELOPS_GATEWAY_*`` settings (called once per uvicorn worker)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    return create_app(get_gateway_settings())
