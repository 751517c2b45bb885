"""The page's handlers: `Demo`, plain methods testable without a server.

Each handler takes the tab's `Session` first and returns (or, for chains,
yields) `View`s; `app.build_app` binds them to the page. Models are shared
(`Models`); chains run in jitted chunks and commit to the session between them.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import samplers
from ddpm_jax.images import save_png
from ddpm_jax.inpainting import schedule_length
from ddpm_jax.pipeline import as_key
from ddpm_jax.sampling import initial_noise

from . import editing, render
from .models import Models, ModelUnavailable, own_chain_only
from .pictures import load_picture, open_picture
from .state import InvalidInput, Session, parse_bool, parse_int
from .views import KEEP, WARN, View, warning

log = logging.getLogger(__name__)

MAX_BATCH = 16
MAX_BRANCHES = 8
MAX_MIXES = 12
MAX_RESAMPLINGS = 20
MAX_LAYERS = 16  # the editor's paint layers read for one Inpaint
GIF_MAX_SIDE = 512
GIF_BUDGET_BYTES = 48 * 2**20  # the enlarged frames of one GIF, together
GIF_MAX_FRAMES = 400
MAX_UPLOAD_MB = 10
QUEUE_SIZE = 64
DOWNLOAD_TTL_S = 60  # Gradio copies a download into its own cache as it serves it


def _expire(folder: Path):
    """Delete the files in `folder` older than DOWNLOAD_TTL_S, checking every half of
    that, until the folder is removed (`Demo.close`)."""
    while folder.is_dir():
        time.sleep(max(DOWNLOAD_TTL_S / 2, 0.05))
        stale = time.time() - DOWNLOAD_TTL_S
        for path in folder.glob("[!.]*"):  # none once the folder is gone; ".*" are being written
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile (its tab closed)
                if path.stat().st_mtime <= stale:
                    path.unlink()


class Demo:
    """The page's handlers. Each takes the tab's `Session` first.

    Chains run as generators: after every chunk the session is updated
    (under its lock, if the chain still owns it), and at most one view every
    `min_interval` seconds (plus the last) goes to the page, so rendering
    never falls behind the computation.
    """

    def __init__(self, models: Models, default: str, *, min_interval: float = 0.1):
        self.models = models
        self.default = models.add(default)
        self.min_interval = min_interval
        self.workdir: Path | None = None
        self._lock = threading.Lock()

    def _out(self, session: Session, name: str, suffix: str) -> Path:
        """A fresh path for a download of this tab, in a folder made on first use
        and removed at exit (SIGTERM included: see `cli.run`). Gradio serves a copy
        from its own cache (cleared by `delete_cache`), so ours are deleted once
        older than DOWNLOAD_TTL_S (`_expire`, on a timer) or when their tab's session ends."""
        with self._lock:
            if self.workdir is None:
                self.workdir = Path(tempfile.mkdtemp(prefix="ddpm_jax_demo_"))
                atexit.register(self.close)
                threading.Thread(target=_expire, args=(self.workdir,), name="expire-downloads", daemon=True).start()
            path = self.workdir / f"{name}_{uuid.uuid4().hex[:8]}{suffix}"
        with session.lock:
            session.downloads = [p for p in session.downloads if p.exists()] + [path]
        return path

    def forget_downloads(self, session: Session):
        """Delete the tab's download files (Gradio calls this when the tab's session ends)."""
        with session.lock:
            paths, session.downloads = session.downloads, []
        for path in paths:
            path.unlink(missing_ok=True)

    def close(self):
        """Remove the download folder (at exit; Gradio's own copies go with its cache);
        its `_expire` timer ends with it."""
        with self._lock:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None

    # -- views ------------------------------------------------------------

    def _model(self, session: Session):
        return self.models.get(session.choice, session.ema, session.sampler, session.chain_steps)

    def _frame(self, model, x) -> np.ndarray:
        """Display image: the grid upscaled (nearest) for small models."""
        img = render.grid(np.asarray(x))
        return render.for_display(render.upscale(img, render.display_scale(model.image_shape[0])))

    def _plot(self, model, step: int) -> np.ndarray:
        return render.schedule_plot(np.asarray(model.coeffs.alphas_cumprod), step)

    def _view(self, session: Session, show_x0: bool, status=KEEP) -> View:
        """The session as it stands: image, step, plot (and `status`, if given)."""
        with session.lock:
            x, pred, step = session.x, session.pred_x0, session.step
        if x is None:
            return View(image=None, step=None, status=status, plot=None)
        model = self._model(session)
        shown = pred if show_x0 and pred is not None else x
        return View(image=self._frame(model, shown), step=step, status=status, plot=self._plot(model, step))

    def _warn(self, session: Session, show_x0: bool, err: Exception) -> View:
        """A refused request: the session unchanged, the reason in the status line."""
        return self._view(session, show_x0, warning(err))

    def _ensure(self, session: Session):
        """The session's model; a tab that never pressed Reset (an API client) gets the default."""
        if session.x is None:
            self._reset(session, self.default, False, 0, 1)
        return self._model(session)

    def _reset(self, session, choice, ema, seed, batch, sampler="ddpm", chain_steps=None):
        ema = parse_bool(ema, "EMA")
        seed = parse_int(seed, "seed", 0, 2**31 - 1)
        n = parse_int(batch, "batch size", 1, MAX_BATCH)
        switch = not self.models.is_loaded(choice, ema)
        base = self.models.get(choice, ema)  # loads it the first time; compiles nothing
        if own_chain_only(base):  # the page's sampler and chain steps do not apply
            sampler, steps = base.sampler.name, None
        else:
            rule = samplers.get(sampler)
            T = base.diffusion_config.num_diffusion_timesteps
            most = rule.max_steps(T)
            # The page's empty number field sends 0: 0 (or nothing) means all T steps.
            steps = None if chain_steps in (None, "") else parse_int(chain_steps, "chain steps", 0, most) or None
            if steps is None and most < T:
                raise ValueError(f"{sampler} needs a number of chain steps (1..{most}; 10 to 20 is plenty)")
        model = self.models.get(choice, ema, sampler, steps)
        if switch:  # under `reset`'s loading message; elsewhere the first Denoise compiles, with a note
            self.models.warm_chain(model, n)
        x = initial_noise(as_key(seed), jnp.arange(n, dtype=jnp.int32), model.image_shape)
        with session.lock:
            session.generation += 1  # ends a running chain
            session.choice, session.ema, session.seed = choice, ema, seed
            session.sampler, session.chain_steps = sampler, steps
            session.x, session.step, session.pred_x0 = x, model.num_timesteps, None
            session.trajectory.clear()
            session.trajectory.add(render.grid(np.asarray(x)))
        return model

    # -- handlers -----------------------------------------------------------

    def reset(self, session: Session, choice, ema, seed, batch, sampler="ddpm", chain_steps=None):
        """Fresh x_T from the seed, for a chain of `chain_steps` steps of `sampler`
        (None: all T steps); also sets the model dropdown and EMA box.

        A model not loaded yet is fetched/converted/compiled first, which can
        take a while: the page says so meanwhile.
        """
        if isinstance(choice, str) and choice in self.models.choices and not self.models.is_loaded(choice, ema):
            label = f"{choice}{' (EMA)' if ema else ''}"
            yield self._view(session, False, f"loading {label} (first use: fetch, convert, compile)…")
        try:
            model = self._reset(session, choice, ema, seed, batch, sampler, chain_steps)
        except (ValueError, ModelUnavailable) as err:
            status = warning(err)
            if session.x is not None:
                status += f" (still on {session.choice})"
            yield self._view(session, False, status).but(model=session.choice or choice, ema=session.ema)
            return
        T = model.num_timesteps
        if own_chain_only(model):
            chain = f", distilled: its own {session.sampler} chain of {T} steps (the page's sampler does not apply)"
        elif session.chain_steps is None and session.sampler == "ddpm":
            chain = ""
        else:
            chain = f", {session.sampler} over {T} steps"
        status = f"{choice}{' (EMA)' if session.ema else ''}{chain}: fresh x_T, step {T} of T={T}"
        view = self._view(session, False, status).but(model=session.choice, ema=session.ema)
        # A distilled chain is short: one Denoise runs all of it.
        yield view.but(per_click=T) if own_chain_only(model) else view

    def view(self, session: Session, show_x0):
        """The session re-shown (x_t or predicted x_0); the status line stays."""
        return self._view(session, show_x0 is True)

    def stop(self, session: Session, show_x0):
        with session.lock:
            session.generation += 1
            step = session.step
        return self._view(session, show_x0 is True, f"stopped at step {step}")

    def _drive(self, session, gen, chunks, total, progress, commit, render_fn, desc, superseded=None, unit="steps"):
        """Run `chunks` while chain `gen` owns the session; yield throttled Views.

        After chunk i (blocked on, so a Stop lands within one chunk), with
        `progress(i, item)` of `total` done, the chain's state is committed; a
        View is yielded for the first chunk, then whenever `min_interval` has
        passed since the last one, and at the end, each with the progress bar.
        A chain that loses the session ends with `superseded()`, if given: the
        session as it now is, so the page never keeps showing a stale chain.
        """
        last = -float("inf")
        for i, item in enumerate(chunks, 1):
            item.x.block_until_ready()
            done = progress(i, item)
            due = done == total or time.monotonic() - last >= self.min_interval
            with session.lock:
                owner = session.generation == gen
                if owner:
                    commit(item, due, done == total)
            if not owner:  # Stop, Reset or a newer chain took over
                log.info("%s ended: superseded at step %d", desc, session.step)
                if superseded is not None:
                    yield superseded()
                return
            if due:
                yield render_fn(item, done == total).but(bar=render.progress_bar(done, total, desc, unit))
                last = time.monotonic()

    def _row(self, model, parts) -> np.ndarray:
        """Batches of images side by side in one row, enlarged for the page."""
        row = np.concatenate([np.asarray(p) for p in parts])
        img = render.upscale(render.grid(row, ncol=len(row)), render.display_scale(model.image_shape[0]))
        return render.for_display(img)

    def _side_chain(self, session, gen, model, chunks, n, start, view, what, desc, commit=None):
        """A reverse chain of n images from `start` down to 0 beside the session's
        (branching, interpolation): streamed with `view(item, done)`, the session
        left as it is; `commit(item, due, done)`, if given, sees each chunk it owns."""
        if self.models.first_run(model, "denoise", n):
            note = f"compiling for {what} (first use of this size on this server)…"
            yield View(status=note, bar=render.progress_bar(0, start, note))
        commit = commit or (lambda item, due, done: None)
        yield from self._drive(session, gen, chunks, start, lambda i, item: start - item.step, commit, view, desc)

    def _main_chain(self, session, gen, model, chunks, start, target, show_x0, verb):
        def commit(item, due, done):
            session.x, session.step, session.pred_x0 = item
            if due:
                session.trajectory.add(render.grid(np.asarray(item.x)))

        def view(item, done):
            shown = item.pred_x0 if show_x0 and item.pred_x0 is not None else item.x
            status = (
                f"{verb}d {abs(item.step - start)} steps: now at step {item.step}"
                if done
                else f"{verb[:-1]}ing: step {item.step} (target {target})"
            )
            return View(
                image=self._frame(model, shown), step=item.step, status=status, plot=self._plot(model, item.step)
            )

        if self.models.first_run(model, verb, session.n):
            note = f"compiling {verb} for batch size {session.n} (first use of this size on this server)…"
            yield self._view(session, show_x0, note).but(bar=render.progress_bar(0, abs(target - start), note))

        # A chain that took over keeps its own status line.
        yield from self._drive(
            session,
            gen,
            chunks,
            abs(target - start),
            lambda i, item: abs(item.step - start),
            commit,
            view,
            verb[:-1] + "ing",
            superseded=lambda: self._view(session, show_x0),
        )

    def denoise(self, session: Session, steps, show_x0, clip):
        """Reverse steps from the current x_t (Alg. 2), streamed."""
        try:
            model = self._ensure(session)
            with session.lock:
                k = parse_int(steps, "steps", 1, model.num_timesteps)
                start = session.step
                if start == 0:
                    raise ValueError("nothing to denoise at step 0 (a clean image): Diffuse or Reset first")
                if k > start:
                    raise ValueError(f"steps={k} is more than the {start} steps left to denoise")
                # A multistep sampler (DPM-Solver++) continues from the last prediction.
                chunks = model.denoise_steps(
                    session.n,
                    k,
                    x=session.x,
                    curr_step=start,
                    key=session.seed,
                    clip=parse_bool(clip, "clip"),
                    pred_x0=session.pred_x0,
                )
                session.generation += 1
                gen = session.generation
        except (ValueError, ModelUnavailable) as err:
            yield self._warn(session, show_x0 is True, err)
            return
        yield from self._main_chain(session, gen, model, chunks, start, start - k, show_x0 is True, "denoise")

    def diffuse(self, session: Session, steps, show_x0):
        """Forward steps q(x_t | x_{t-1}) from the current x (eq. 2), streamed."""
        try:
            model = self._ensure(session)
            T = model.num_timesteps
            with session.lock:
                k = parse_int(steps, "steps", 1, T)
                start = session.step
                if start == T:
                    raise ValueError(f"nothing to diffuse at step T={T} (pure noise): Denoise or Reset first")
                if k > T - start:
                    raise ValueError(f"steps={k} is more than the {T - start} steps left before T={T}")
                # At step 0 the page shows x_0 clipped to [-1, 1] (an unclipped chain's last step
                # may overshoot a little): that picture is what gets diffused.
                x = jnp.clip(session.x, -1.0, 1.0) if start == 0 else session.x
                chunks = model.diffuse_steps(session.n, k, x=x, curr_step=start, key=session.seed)
                session.generation += 1
                gen = session.generation
        except (ValueError, ModelUnavailable) as err:
            yield self._warn(session, show_x0 is True, err)
            return
        yield from self._main_chain(session, gen, model, chunks, start, start + k, False, "diffuse")

    def use_image(self, session: Session, image, show_x0=False):
        """An uploaded picture (its file path) becomes x_0 (step 0) for every sample of the batch.

        Any image Pillow reads of at most `pictures.MAX_PICTURE_PIXELS`, at its real bit
        depth (`images.load_image`), center-cropped and resized to the model's resolution
        and channels.
        """
        try:
            model = self._ensure(session)
            h, _, c = model.image_shape
            x0 = load_picture(image, h, c, "the picture")
        except (ValueError, ModelUnavailable) as err:
            return self._warn(session, show_x0 is True, err)
        with session.lock:
            session.generation += 1
            n = session.n
            session.x = jnp.broadcast_to(jnp.asarray(x0), (n, *x0.shape))
            session.step, session.pred_x0 = 0, None
            session.trajectory.clear()
            session.trajectory.add(render.grid(np.asarray(session.x)))
        return self._view(session, False, f"x_0 = your picture at {h}x{h}: Diffuse it, then Denoise it back")

    def branch(self, session: Session, k, clip):
        """k independent continuations of sample 0's x_t down to x_0 (paper, Fig. 7).

        Shows x_t first, then the continuations, in the branches image.
        The session's own x_t and step are left as they are.
        """
        try:
            model = self._ensure(session)
            k = parse_int(k, "branches", 1, MAX_BRANCHES)
            with session.lock:
                start = session.step
                if start == 0:
                    raise ValueError("x is already clean (step 0): Diffuse or Reset first, then branch")
                session.branches += 1
                key = jax.random.fold_in(as_key(session.seed), session.branches)
                xt, prev = session.x[:1], session.pred_x0
                session.generation += 1
                gen = session.generation
            chunks = model.denoise_steps(
                k,
                start,
                x=jnp.repeat(xt, k, axis=0),
                curr_step=start,
                key=key,
                clip=parse_bool(clip, "clip"),
                pred_x0=None if prev is None else jnp.repeat(prev[:1], k, axis=0),
            )
        except (ValueError, ModelUnavailable) as err:
            yield View(branches=None, status=warning(err))
            return

        def view(item, done):
            status = (
                f"branched: x_t at step {start} (left) and {k} continuations to x_0"
                if done
                else f"branching from step {start}: step {item.step}"
            )
            return View(branches=self._row(model, [xt, item.x]), status=status)

        yield from self._side_chain(session, gen, model, chunks, k, start, view, f"{k} continuations", "branching")

    # -- inpainting and interpolation -----------------------------------------

    def to_editor(self, session: Session):
        """Sample 0 of the current x into the inpainting editor, enlarged as the page shows it."""
        with session.lock:
            x = session.x
        if x is None:
            return View(status=WARN + "nothing to edit yet: press Reset first")
        model = self._model(session)
        img = render.upscale(render.grid(np.asarray(x[:1])), render.display_scale(model.image_shape[0]))
        rgb = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img
        return View(
            editor={"background": rgb, "layers": [], "composite": rgb},
            status="sample 0 is in the editor: paint over the part to fill, then press Inpaint",
        )

    def inpaint(self, session: Session, edited, steps, jump_length, jump_n_sample, show_x0, clip):
        """Fill the painted part of the editor's picture (RePaint), one completion per
        sample of the batch, streamed; at the end they become x (step 0).

        `edited` is what `inputs.editor_files` hands over: the picture's and the paint
        layers' file paths, each opened within `pictures.MAX_PICTURE_PIXELS`, one at a time.
        A Stop leaves the session as it was: a RePaint chain is not a chain Denoise can go on with.
        """
        show_x0 = show_x0 is True
        try:
            if isinstance(edited, InvalidInput):
                raise ValueError(edited)
            if not isinstance(edited, dict) or edited.get("background") is None:
                raise ValueError(
                    "no picture in the editor: put sample 0 there (or upload one), then paint over the part to fill"
                )
            layers = edited.get("layers") or []
            if len(layers) > MAX_LAYERS:
                raise ValueError(f"{len(layers)} paint layers; Inpaint reads at most {MAX_LAYERS}: paint on fewer")
            self._ensure(session)
            model = self.models.get(session.choice, session.ema)  # RePaint respaces the full process itself
            h, _, c = model.image_shape
            T = model.num_timesteps
            steps = parse_int(steps, "RePaint steps", 1, T)
            jump = parse_int(jump_length, "jump length", 1, steps)
            resample = parse_int(jump_n_sample, "resamplings", 1, MAX_RESAMPLINGS)
            clip = parse_bool(clip, "clip")
            background = open_picture(edited["background"], "the editor's picture")
            picture = editing.picture_at(background, h, c)
            painted = (open_picture(path, f"paint layer {i}") for i, path in enumerate(layers, 1))
            fill = editing.fill_mask(painted, (background.height, background.width), h)
            with session.lock:
                n = session.n
                chunks = model.inpaint_steps(
                    picture,
                    ~fill,
                    n,
                    key=session.seed,
                    steps=steps,
                    jump_length=jump,
                    jump_n_sample=resample,
                    clip=clip,
                )
                session.generation += 1
                gen = session.generation
            total = schedule_length(steps, jump, resample)
        except (ValueError, ModelUnavailable) as err:
            yield self._warn(session, show_x0, err)
            return
        keep = jnp.asarray(~fill)[None, :, :, None]
        settings = f"{steps} steps, jump length {jump}, {resample} resampling{'s' if resample > 1 else ''}"

        def commit(item, due, done):
            if done:
                session.x, session.step, session.pred_x0 = item.x, 0, None
                session.trajectory.add(render.grid(np.asarray(item.x)))

        def view(item, done):
            shown = jnp.where(keep, picture, item.pred_x0) if show_x0 and not done else item.x
            status = (
                f"inpainted {n} completion{'s' if n > 1 else ''} ({settings}): now x_0"
                if done
                else f"inpainting ({settings}): at step {item.step} of its chain"
            )
            return View(image=self._frame(model, shown), step=0 if done else item.step, status=status)

        if self.models.first_run(model, "inpaint", n):
            note = f"compiling inpainting for batch size {n} (first use of this size on this server)…"
            yield View(status=note, bar=render.progress_bar(0, total, note, "iterations"))
        chunk = model.chunk_size
        yield from self._drive(
            session,
            gen,
            chunks,
            total,
            lambda i, item: min(i * chunk, total),
            commit,
            view,
            "inpainting",
            superseded=lambda: self._view(session, show_x0),
            unit="iterations",
        )

    def _end(self, session, model, source, upload, seed, what):
        """One end of an interpolation at the model's resolution, (H, W, C) in [-1, 1];
        for another seed, the reverse chain that draws it (run by `_draw`)."""
        h, _, c = model.image_shape
        if source == "upload":
            return load_picture(upload, h, c, f"picture {what}")
        if source == "sample 0":
            with session.lock:
                x = session.x
            return np.clip(np.asarray(x[0]), -1.0, 1.0)
        if source == "another seed":
            seed = parse_int(seed, f"{what}'s seed", 0, 2**31 - 1)
            return model.denoise_steps(1, key=seed, clip=True)
        raise ValueError(f"{what} must come from 'sample 0', 'another seed' or 'upload', got {source!r}")

    def _draw(self, session, gen, model, chunks, what):
        """Run `chunks`, the chain that draws an end of an interpolation, chunk by chunk
        while chain `gen` owns the session (a Stop ends it), streaming its progress;
        returns the sample, (H, W, C), or None when it was stopped."""
        T, drawn = model.num_timesteps, []

        def keep(item, due, done):
            if done:
                drawn.append(np.asarray(item.x[0]))

        def view(item, done):
            return View(status=f"drawing {what} from its seed: step {item.step}")

        yield from self._side_chain(session, gen, model, chunks, 1, T, view, what, f"drawing {what}", commit=keep)
        return drawn[0] if drawn else None

    def interpolate(self, session: Session, a_source, a_upload, b_source, b_upload, b_seed, t, k, clip):
        """k images from A to B through x_t (paper Sec. 4.4, Fig. 8), streamed as a strip A, mixes, B.

        Both are diffused t steps with the same noise and their mixes denoised with
        the reverse noise fixed across lambda; the session's x is left as it is.
        """
        a_end, b_end = (a_source, a_upload, None), (b_source, b_upload, b_seed)
        try:
            model = self._ensure(session)
            t = parse_int(t, "t", 1, model.num_timesteps)
            k = parse_int(k, "k", 2, MAX_MIXES)
            clip = parse_bool(clip, "clip")
            ends = {what: self._end(session, model, *end, what) for what, end in (("A", a_end), ("B", b_end))}
            with session.lock:
                session.generation += 1
                gen = session.generation
        except (ValueError, ModelUnavailable) as err:
            yield View(status=warning(err))
            return
        for what, end in ends.items():
            if not isinstance(end, np.ndarray):  # another seed's sample: a chain of its own, stoppable
                ends[what] = yield from self._draw(session, gen, model, end, what)
                if ends[what] is None:
                    return
        a, b = ends["A"], ends["B"]
        try:
            chunks = model.interpolate_steps(a, b, t, np.linspace(0.0, 1.0, k), key=session.seed, clip=clip)
        except ValueError as err:
            yield View(status=warning(err))
            return

        def view(item, done):
            status = (
                f"interpolated: A, {k} mixes through x_{t}, B"
                if done
                else f"decoding {k} mixes from x_{t}: step {item.step}"
            )
            return View(strip=self._row(model, [a[None], item.x, b[None]]), status=status)

        yield from self._side_chain(session, gen, model, chunks, k, t, view, f"{k} mixes", "interpolating")

    def save_image(self, session: Session, show_x0):
        """The current image (x_t, or predicted x_0) as a PNG at model resolution."""
        with session.lock:
            x, pred, step = session.x, session.pred_x0, session.step
        if x is None:
            return View(download=None)
        shown, what = (pred, "x0_pred") if show_x0 is True and pred is not None else (x, "x")
        path = self._out(session, f"ddpm_{what}_step{step}", ".png")
        return View(download=str(save_png(render.grid(np.asarray(shown)), path)))

    def save_gif(self, session: Session):
        """The trajectory since Reset (or upload) as an animated GIF."""
        with session.lock:
            frames = list(session.trajectory.frames)
        if not frames:
            return View(download=None)
        frames, scale = render.gif_frames(frames, GIF_MAX_SIDE, GIF_BUDGET_BYTES, GIF_MAX_FRAMES)
        path = self._out(session, "ddpm_trajectory", ".gif")
        return View(download=str(render.write_gif(frames, path, scale=scale)))
