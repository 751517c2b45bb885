"""The page's inputs reach the handlers as the client sent them, unconverted.

Gradio's components convert and check their values before a handler runs; a
value of the wrong type (a string for a slider, a file that is not an image)
then fails inside Gradio, and the client gets a generic "upstream app raised
an exception" while the server logs a traceback. `raw(component)` makes the
component pass the value on, so the one place that checks input is the
handler, whose refusal is the page's own message (`state.parse_int`,
`state.parse_bool`, the image loader). The instance is patched rather than
subclassed: Gradio writes a .pyi file beside any module that subclasses a
component.
"""

from __future__ import annotations


def raw(component):
    """`component`, handing its handlers the client's value as sent."""
    component.preprocess = lambda payload: payload
    return component


def image_path(component):
    """An image upload handed over as the uploaded file's path, not opened by Gradio."""
    component.preprocess = lambda payload: None if payload is None else payload.path
    return component


class InvalidInput(str):
    """A value Gradio could not convert; the handler answers with this message."""


def checked(component):
    """`component` with Gradio's own conversion (the image editor needs it), whose
    failure reaches the handler as an `InvalidInput` instead of a traceback."""
    convert = component.preprocess

    def preprocess(payload):
        try:
            return convert(payload)
        except Exception as err:  # any malformed payload: the handler says so on the page
            return InvalidInput(f"{component.label or 'the input'} could not be read ({err})")

    component.preprocess = preprocess
    return component
