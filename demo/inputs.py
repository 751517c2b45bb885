"""The page's input components, handing the handlers what the client sent, unconverted.

Gradio's own components convert and check their values before a handler
runs; a value of the wrong type (a string for a slider, a file that is not an
image) then fails inside Gradio, and the client gets a generic "upstream app
raised an exception" while the server logs a traceback. These subclasses pass
the raw value on, so the one place that checks input is the handler, whose
refusal is the page's own message (`state.parse_int`, `state.parse_bool`,
`images.load_image`). The frontend is the parent's (`is_template`).
"""

from __future__ import annotations

import gradio as gr


class Slider(gr.Slider):
    is_template = True

    def preprocess(self, payload):
        return payload


class Number(gr.Number):
    is_template = True

    def preprocess(self, payload):
        return payload


class Checkbox(gr.Checkbox):
    is_template = True

    def preprocess(self, payload):
        return payload


class Dropdown(gr.Dropdown):
    is_template = True

    def preprocess(self, payload):
        return payload


class ImagePath(gr.Image):
    """An image upload handed over as the uploaded file's path, not opened by Gradio."""

    is_template = True

    def preprocess(self, payload):
        return None if payload is None else payload.path
