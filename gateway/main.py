"""uvicorn entry point: ``uvicorn --factory gateway.main:create_app`` (settings from the environment)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from gateway.app import create_app as _create_app
from gateway.settings import get_gateway_settings


def create_app() -> FastAPI:
    """Build the app from ``MODELOPS_GATEWAY_*`` settings (called once per worker)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    return _create_app(get_gateway_settings())
