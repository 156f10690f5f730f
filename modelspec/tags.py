"""The MLflow side of the format: tag names and the artifact folder the registry and the deployer share.

Registration (:mod:`registry.register`) writes them; the sync controller (:mod:`deployer.sync`),
``modelops status`` and the load-test gate (:mod:`benchmarks.recording`) read and write them. One
name per tag, so two modules can never mean two different tags by one constant.
"""

from __future__ import annotations

TAG_PREFIX = "modelops."
"""Every tag this project writes on a registered model or a model version starts with this."""
BUNDLE_ARTIFACT_PATH = "serving"
"""The run's artifact folder that holds the serving bundle (:data:`modelspec.bundle.BUNDLE_FILES`)."""

# On a registered model
MANAGED_TAG = f"{TAG_PREFIX}managed"
"""``true`` on a registered model the sync controller serves."""
HISTORY_TAG = f"{TAG_PREFIX}champion_history"
"""JSON list of the versions that were champion, oldest first (the last 50)."""

# On a model version
SYNC_STATUS_TAG = f"{TAG_PREFIX}sync_status"
"""What the sync controller did with the version: ``serving``, ``blocked: <why>``, ``failed: <why>``."""
FORCE_TAG = f"{TAG_PREFIX}force"
"""``true``: the version skips the promotion gates once (``modelops promote --force``); the sync controller
removes it when the forced version serves, so later promotions are gated again."""
LOADTEST_STATUS_TAG = f"{TAG_PREFIX}loadtest_status"
"""``passed`` or ``failed``: the last load-test gate of the version (``modelops bench``)."""
LOADTEST_SUMMARY_TAG = f"{TAG_PREFIX}loadtest_summary"
"""One line of the last load test's figures."""
LOADTEST_REPORT_TAG = f"{TAG_PREFIX}loadtest_report"
"""``runs:/<run>/...`` of the last load test's HTML report."""
