"""The Gradio page: watch a DDPM denoise (Alg. 2) and diffuse (eq. 2) live.

`handlers.Demo` holds the handlers (plain methods, testable without a server);
`build_app` lays out the page and names the API endpoints; `launch` serves
it. Models are shared (`Models`); each tab has its own `Session`.
"""

from __future__ import annotations

import gradio as gr
from starlette.middleware import Middleware

from ddpm_jax import samplers

from . import render
from .handlers import MAX_BATCH, MAX_BRANCHES, MAX_MIXES, MAX_UPLOAD_MB, QUEUE_SIZE, Demo
from .inputs import editor_files, picture_file, raw, screen_pictures
from .models import PAGE_CHAIN_STEPS, PAGE_SAMPLER, Models
from .state import Session
from .uploads import CLIENT_UPLOAD_MB, KEPT_S, SWEEP_S, TOTAL_UPLOAD_MB, UploadQuota
from .views import bind

CSS = """
#xt img, #branches img { image-rendering: pixelated; }
.ddpm-bar { height: 10px; border-radius: 5px; background: var(--neutral-200); overflow: hidden; }
.ddpm-bar > div { height: 100%; background: var(--color-accent); transition: width 80ms linear; }
.ddpm-bar-text { font-size: var(--text-sm); color: var(--body-text-color-subdued); }
"""


def build_app(
    models: Models, default: str, *, min_interval: float = 0.1, concurrency: int = 4, queue_size: int = QUEUE_SIZE
) -> gr.Blocks:
    """The page. Named endpoints: reset, denoise, diffuse, stop, view, use_image,
    branch, to_editor, inpaint, interpolate, save_image, save_gif (state is per client
    session)."""
    demo = Demo(models, default, min_interval=min_interval)
    choices = list(models.choices)
    with gr.Blocks(title="ddpm_jax: watch diffusion", analytics_enabled=False, delete_cache=(SWEEP_S, KEPT_S)) as app:
        session = gr.State(Session(), delete_callback=demo.forget_downloads)
        gr.Markdown(
            "## DDPM in JAX: watch diffusion step by step\n"
            "Reset draws x_T from the seed; **Denoise** runs reverse steps p(x_{t-1} | x_t), "
            "**Diffuse** forward steps q(x_t | x_{t-1}). The step t counts forward steps "
            "(T = pure noise, 0 = clean). For a quick look, pick a fast sampler (ddim, or "
            "dpmpp_2m: DPM-Solver++) and a short chain (say 20 steps): the step then counts along it."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                with gr.Row():
                    model = raw(gr.Dropdown(choices, value=demo.default, label="model", scale=3))
                    ema = raw(gr.Checkbox(False, label="EMA", scale=1, min_width=60))
                with gr.Row():
                    seed = raw(gr.Number(0, label="seed"))
                    batch = raw(gr.Slider(1, MAX_BATCH, value=1, step=1, label="batch size (at Reset)"))
                with gr.Row():
                    sampler = raw(
                        gr.Dropdown(list(samplers.names()), value="ddpm", label="sampler (at Reset)", elem_id="sampler")
                    )
                    chain_steps = raw(gr.Number(0, label="chain steps S (at Reset; 0: all T)", elem_id="chain_steps"))
                reset_btn = gr.Button("Reset (fresh x_T)")
                steps = raw(gr.Number(100, label="steps per Denoise/Diffuse", elem_id="steps"))
                with gr.Row():
                    denoise_btn = gr.Button("Denoise", variant="primary", elem_id="denoise")
                    diffuse_btn = gr.Button("Diffuse", elem_id="diffuse")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                with gr.Row():
                    show_x0 = raw(gr.Checkbox(False, label="show predicted x0"))
                    clip = raw(gr.Checkbox(True, label="clip predicted x0 to [-1, 1]"))
                plot = gr.Image(
                    label="noise schedule",
                    show_label=False,
                    format="png",
                    interactive=False,
                    buttons=[],
                    elem_id="plot",
                )
            with gr.Column(scale=2):
                step = gr.Number(label="step t", interactive=False, elem_id="step")
                status = gr.Markdown(label="status", elem_id="status")
                bar = gr.HTML(render.progress_bar(0, 1, ""), elem_id="bar")
                image = gr.Image(
                    label="x_t (or predicted x0, when ticked)",
                    format="png",
                    interactive=False,
                    elem_id="xt",
                    height=520,
                    buttons=["download", "fullscreen"],
                )
        with gr.Accordion("Beyond the port: your picture, branching, downloads", open=False):
            with gr.Row():
                upload = picture_file(
                    gr.Image(
                        label="upload a picture: it becomes x_0",
                        format="png",
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                    ),
                    "the picture",
                )
                with gr.Column():
                    branches = raw(gr.Slider(1, MAX_BRANCHES, value=4, step=1, label="branches k"))
                    branch_btn = gr.Button("Branch: k continuations of sample 0's x_t")
                    save_png_btn = gr.Button("Current image (PNG)")
                    save_gif_btn = gr.Button("Trajectory (animated GIF)")
                    download = gr.File(label="download", interactive=False)
            branch_img = gr.Image(
                label="x_t and its continuations (paper, Fig. 7)", format="png", interactive=False, elem_id="branches"
            )
        with gr.Accordion(
            "Inpaint (RePaint) and interpolate (paper Sec. 4.4): no retraining", open=False, elem_id="editing"
        ):
            with gr.Row():
                with gr.Column():
                    editor = editor_files(
                        gr.ImageEditor(
                            label="paint over the part to fill (sample 0, or upload a picture)",
                            type="filepath",
                            image_mode="RGBA",
                            sources=["upload", "clipboard"],
                            transforms=(),
                            brush=gr.Brush(colors=["#ff3030"], color_mode="fixed", default_size=24),
                            format="png",
                            elem_id="editor",
                            height=420,
                        )
                    )
                    with gr.Row():
                        to_editor_btn = gr.Button("Sample 0 into the editor", elem_id="to_editor")
                        inpaint_btn = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
                    with gr.Accordion("RePaint's schedule (Lugmayr et al. 2022)", open=False):
                        rp_steps = raw(
                            gr.Number(250, label="steps (the process respaced; at most T)", elem_id="rp_steps")
                        )
                        rp_jump = raw(gr.Number(10, label="jump length j", elem_id="rp_jump"))
                        rp_resample = raw(
                            gr.Number(10, label="resamplings r (1: replacement, no jumps)", elem_id="rp_resample")
                        )
                with gr.Column():
                    a_source = raw(gr.Radio(["sample 0", "upload"], value="sample 0", label="A"))
                    a_upload = picture_file(
                        gr.Image(
                            label="A (upload)",
                            format="png",
                            type="filepath",
                            image_mode=None,
                            sources=["upload", "clipboard"],
                        ),
                        "picture A",
                    )
                    b_source = raw(gr.Radio(["another seed", "upload"], value="another seed", label="B"))
                    b_seed = raw(gr.Number(1, label="B's seed"))
                    b_upload = picture_file(
                        gr.Image(
                            label="B (upload)",
                            format="png",
                            type="filepath",
                            image_mode=None,
                            sources=["upload", "clipboard"],
                        ),
                        "picture B",
                    )
                    with gr.Row():
                        interp_t = raw(gr.Number(500, label="t (1..T)"))
                        interp_k = raw(gr.Slider(2, MAX_MIXES, value=8, step=1, label="mixes k"))
                    interp_btn = gr.Button("Interpolate A to B", elem_id="interpolate")
            strip = gr.Image(
                label="A, the mixes from lambda = 0 to 1, B", format="png", interactive=False, elem_id="strip"
            )

        # Each View field's component, once; each endpoint lists the fields it sends.
        outputs = dict(
            image=image,
            step=step,
            status=status,
            plot=plot,
            bar=bar,
            model=model,
            ema=ema,
            branches=branch_img,
            download=download,
            editor=editor,
            strip=strip,
            per_click=steps,
        )
        shown = ("image", "step", "status", "plot")

        def on(trigger, handler, inputs, fields, **kwargs):
            return trigger(bind(handler, fields, gr.skip), inputs, [outputs[f] for f in fields], **kwargs)

        chain = dict(show_progress="minimal", concurrency_id="chains", concurrency_limit=concurrency)
        reset_in = [session, model, ema, seed, batch, sampler, chain_steps]
        on(reset_btn.click, demo.reset, reset_in, (*shown, "model", "ema", "per_click"), api_name="reset")
        for trigger in (model.input, ema.input):
            on(trigger, demo.reset, reset_in, (*shown, "model", "ema", "per_click"), api_visibility="private")
        # A new page starts on a chain that its first Denoise runs to a picture; API clients keep
        # the components' own defaults (ddpm over all T, 100 steps a call).
        page_chain = app.load(
            lambda: (PAGE_SAMPLER, PAGE_CHAIN_STEPS, PAGE_CHAIN_STEPS),
            None,
            [sampler, chain_steps, steps],
            queue=False,
            api_visibility="private",
        )
        on(page_chain.then, demo.reset, reset_in, (*shown, "model", "ema", "per_click"), api_visibility="private")
        on(
            denoise_btn.click,
            demo.denoise,
            [session, steps, show_x0, clip],
            (*shown, "bar"),
            api_name="denoise",
            **chain,
        )
        on(diffuse_btn.click, demo.diffuse, [session, steps, show_x0], (*shown, "bar"), api_name="diffuse", **chain)
        on(stop_btn.click, demo.stop, [session, show_x0], shown, api_name="stop", queue=False)
        on(show_x0.input, demo.view, [session, show_x0], shown, api_name="view", queue=False)
        on(upload.upload, demo.use_image, [session, upload, show_x0], shown, api_name="use_image")
        on(
            branch_btn.click,
            demo.branch,
            [session, branches, clip],
            ("branches", "status", "bar"),
            api_name="branch",
            **chain,
        )
        on(to_editor_btn.click, demo.to_editor, [session], ("editor", "status"), api_name="to_editor")
        on(
            inpaint_btn.click,
            demo.inpaint,
            [session, editor, rp_steps, rp_jump, rp_resample, show_x0, clip],
            (*shown, "bar"),
            api_name="inpaint",
            **chain,
        )
        on(
            interp_btn.click,
            demo.interpolate,
            [session, a_source, a_upload, b_source, b_upload, b_seed, interp_t, interp_k, clip],
            ("strip", "status", "bar"),
            api_name="interpolate",
            **chain,
        )
        on(save_png_btn.click, demo.save_image, [session, show_x0], ("download",), api_name="save_image")
        on(save_gif_btn.click, demo.save_gif, [session], ("download",), api_name="save_gif")
    app.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    return screen_pictures(app)


def launch(
    app: gr.Blocks,
    host: str = "127.0.0.1",
    port: int | None = None,
    max_upload_mb: float = MAX_UPLOAD_MB,
    client_upload_mb: float = CLIENT_UPLOAD_MB,
    total_upload_mb: float = TOTAL_UPLOAD_MB,
    **kwargs,
):
    """Serve the page (loopback by default); returns gradio's (app, local_url, share_url).

    A file over `max_upload_mb` is refused by Gradio before it reaches a handler;
    uploads past `client_upload_mb` from one client, or `total_upload_mb` from all,
    within the time Gradio keeps them are refused before they are read (`uploads.UploadQuota`).
    """
    quota = Middleware(UploadQuota, per_client_mb=client_upload_mb, total_mb=total_upload_mb)
    return app.launch(
        server_name=host,
        server_port=port,
        css=CSS,
        ssr_mode=False,
        footer_links=["api"],
        max_file_size=int(max_upload_mb * 2**20),
        app_kwargs={"middleware": [quota]},
        **kwargs,
    )
