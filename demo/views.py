"""What a handler shows: a `View`, one named field per output of the page.

Handlers return (or yield) Views; `build_app` declares, per endpoint, which
fields it sends and binds each field to its component once, so adding an
output means a field here and a component there. A field left at `KEEP`
leaves its component as it is.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class _Keep:
    def __repr__(self):
        return "KEEP"


KEEP = _Keep()
WARN = "⚠️ "
# An absolute path of the server (two parts at least, "~/" included), not one inside a URL.
_SERVER_PATH = re.compile(r"(?<![\w/:.-])~?(?:/[^\s/'\"()\[\],;]+){2,}")


def warning(err) -> str:
    """A refusal for the status line: WARN and the message, each server path in it
    cut to its file name (the page never shows where the server keeps files)."""
    return WARN + _SERVER_PATH.sub(lambda m: m[0].rsplit("/", 1)[1], str(err))


@dataclass(frozen=True)
class View:
    image: Any = KEEP  # x_t (or the predicted x_0), display size
    step: Any = KEEP  # the step counter
    status: Any = KEEP  # the status line (a message, or a warning starting with WARN)
    plot: Any = KEEP  # alpha-bar against t, the step marked
    bar: Any = KEEP  # the progress bar (HTML)
    model: Any = KEEP  # the model dropdown
    ema: Any = KEEP  # the EMA checkbox
    branches: Any = KEEP  # x_t and its continuations
    download: Any = KEEP  # a file to download
    editor: Any = KEEP  # the inpainting editor: a picture to paint the mask on
    strip: Any = KEEP  # the interpolation strip, A to B
    per_click: Any = KEEP  # steps per Denoise/Diffuse

    def but(self, **changes) -> View:
        return dataclasses.replace(self, **changes)

    def values(self, names, skip):
        """The fields `names`, in order, with `skip()` for those left at KEEP
        (one field: its value alone, as Gradio expects for one output)."""
        out = tuple(skip() if getattr(self, n) is KEEP else getattr(self, n) for n in names)
        return out[0] if len(out) == 1 else out


FIELDS = tuple(f.name for f in dataclasses.fields(View))


def bind(handler: Callable, names: tuple[str, ...], skip: Callable) -> Callable:
    """`handler` returning Views -> a function returning the values of `names` (generators too).

    Keeps the handler's signature, so the API shows its parameter names.
    """
    unknown = set(names) - set(FIELDS)
    if unknown:
        raise ValueError(f"no View fields {sorted(unknown)}; known: {FIELDS}")
    if inspect.isgeneratorfunction(handler):

        @functools.wraps(handler)
        def run(*args):
            for view in handler(*args):
                yield view.values(names, skip)
    else:

        @functools.wraps(handler)
        def run(*args):
            return handler(*args).values(names, skip)

    return run
