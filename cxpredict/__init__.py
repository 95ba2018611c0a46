"""cxpredict: customer behaviour prediction from order and interaction logs."""

from __future__ import annotations

__version__ = "0.1.0"
