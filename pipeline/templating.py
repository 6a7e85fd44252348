"""HTML from the jinja2 templates in ``pipeline/data/`` (autoescaped; one environment)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

__all__ = ["render"]


@lru_cache(maxsize=1)
def _environment():
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("ichseg.pipeline", "data"),
                       autoescape=select_autoescape(default=True, default_for_string=True),
                       trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render(template: str, filters: dict[str, Callable] | None = None, **context: Any) -> str:
    """Render ``pipeline/data/<template>`` with ``context``; ``filters`` are added for this call."""
    env = _environment()
    if filters:
        env = env.overlay()
        env.filters.update(filters)
    return env.get_template(template).render(**context)
