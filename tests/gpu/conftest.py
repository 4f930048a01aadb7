from __future__ import annotations

from tests.train.conftest import token_cache  # noqa: F401  (autouse: a per-session token cache)
