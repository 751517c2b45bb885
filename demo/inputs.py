"""The page's inputs reach the handlers as the client sent them, unconverted.

Gradio's components convert and check their values before a handler runs; a
value of the wrong type (a string for a slider, a file that is not an image)
then fails inside Gradio, and the client gets a generic "upstream app raised
an exception" while the server logs a traceback. `raw(component)` makes the
component pass the value on, so the one place that checks input is the
handler, whose refusal is the page's own message (`state.parse_int`,
`state.parse_bool`, `pictures.open_picture`). The instance is patched rather
than subclassed: Gradio writes a .pyi file beside any module that subclasses a
component.

Pictures (`picture_file`, `editor_files`) reach the handler as the paths of uploaded
files, never decoded by Gradio, so the handler bounds their pixels before
decoding. Their payloads are screened before Gradio reads them
(`screen_pictures`): anything but files uploaded to this server (a string, a
URL Gradio would fetch, a path elsewhere on the server) reaches the handler as
an `InvalidInput`, whose message the page shows.
"""

from __future__ import annotations

from gradio.utils import get_upload_folder, is_in_or_equal
from gradio_client.utils import is_file_obj_with_meta, is_http_url_like

from .state import InvalidInput

EDITOR_FIELDS = ("background", "layers", "composite", "id")


def raw(component):
    """`component`, handing its handlers the client's value as sent."""
    component.preprocess = lambda payload: payload
    return component


def picture_file(component, what: str):
    """An image upload handed over as the uploaded file's path, not opened by Gradio."""
    component.preprocess = lambda payload: None if payload is None else payload.path
    component.refusal = lambda payload: None if payload is None else _refused_file(payload, what)
    return component


def editor_files(component):
    """The image editor's value handed over as {"background": path or None, "layers": [paths]},
    nothing decoded by Gradio (the composite, which the page does not use, is not read)."""

    def preprocess(payload):
        if payload is None:
            return None
        background = payload.background.path if payload.background is not None else None
        return {"background": background, "layers": [layer.path for layer in payload.layers]}

    component.preprocess = preprocess
    component.refusal = _refused_edit
    return component


def screen_pictures(app):
    """Make `app` check what clients send for `picture_file` and `editor_files` inputs before
    Gradio reads it: a refused payload goes on as nothing (None), and its handler
    gets the refusal as an `InvalidInput` in its place."""
    preprocess_data = app.preprocess_data

    async def screened(block_fn, inputs, state, explicit_call=False):
        inputs, refused = list(inputs), {}
        for i, block in enumerate(block_fn.inputs[: len(inputs)]):
            reason = getattr(block, "refusal", lambda payload: None)(inputs[i])
            if reason is not None:
                refused[i], inputs[i] = reason, None
        processed = await preprocess_data(block_fn, inputs, state, explicit_call)
        for i, reason in refused.items():
            processed[i] = InvalidInput(reason)
        return processed

    app.preprocess_data = screened
    return app


def _refused_file(payload, what: str) -> str | None:
    """Why `payload` is not a file uploaded to this server (None if it is); names no server path."""
    path = payload.get("path") if isinstance(payload, dict) else payload
    if is_http_url_like(path):
        return f"{what} must be uploaded, not a URL: upload the file (gradio_client: handle_file)"
    if not is_file_obj_with_meta(payload):
        return f"{what} must be an uploaded file, got {type(payload).__name__} (gradio_client: handle_file)"
    try:
        uploaded = is_in_or_equal(path, get_upload_folder())
    except (OSError, ValueError):  # not a path at all (a NUL in it, say)
        uploaded = False
    if not uploaded:
        return f"{what} is not a file uploaded to this server: upload it first (gradio_client: handle_file)"
    return None


def _refused_edit(payload) -> str | None:
    """Why `payload` is not an image editor's value of uploaded files (None if it is)."""
    if payload is None:
        return None
    if not isinstance(payload, dict) or not set(payload) <= set(EDITOR_FIELDS):
        return f"the editor's value must be a dict of {', '.join(EDITOR_FIELDS)}, got {type(payload).__name__}"
    layers = payload.get("layers") or []
    if not isinstance(layers, list) or not isinstance(payload.get("id"), (str, type(None))):
        return "the editor's layers must be a list of uploaded files, its id text"
    files = [("the editor's picture", payload.get("background")), ("its composite", payload.get("composite"))]
    files += [(f"paint layer {i}", layer) for i, layer in enumerate(layers, 1)]
    return next((why for what, file in files if file is not None and (why := _refused_file(file, what))), None)
