"""The models the page offers, loaded once and shared by every browser session.

A choice (what the dropdown shows) maps to two names for
`Diffusion.from_pretrained`: the raw weights and the EMA weights.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ddpm_jax import samplers
from ddpm_jax.pipeline import Diffusion

log = logging.getLogger(__name__)

# choice -> (name, EMA name). The digits models ship with the package (digits_4step: distilled
# from digits, it samples on its own 4-step chain only, whatever the page's sampler); the
# others are fetched (pesser/pytorch_diffusion checkpoints, the Hub) on first use.
CHOICES: dict[str, tuple[str, str]] = {
    "digits": ("digits", "digits"),
    "digits_4step": ("digits_4step", "digits_4step"),
    "cifar10": ("cifar10", "ema_cifar10"),
    "lsun_bedroom": ("lsun_bedroom", "ema_lsun_bedroom"),
    "lsun_cat": ("lsun_cat", "ema_lsun_cat"),
    "lsun_church": ("lsun_church", "ema_lsun_church"),
    "celebahq": ("google/ddpm-celebahq-256", "google/ddpm-ema-celebahq-256"),
}

Loader = Callable[..., Diffusion]

# The chain a new page starts on, and its steps per Denoise: the first click ends on a picture
# (a 1000-step DDPM at 100 steps a click would end on noise at step 900).
PAGE_SAMPLER, PAGE_CHAIN_STEPS = "dpmpp_2m", 20

RETRY_AFTER_S = 60.0  # a failed fetch (e.g. offline, after the Hub's retries) is not retried sooner


class ModelUnavailable(RuntimeError):
    """A model could not be loaded or fetched; the message says which and why."""


def _program(model: Diffusion, kind: str, n: int) -> tuple:
    """What one compiled program is: the UNet (shared by a model's respaced
    copies), the kind of chain, its sampler when denoising, the batch size."""
    return id(model.model), kind, model.sampler if kind == "denoise" else None, n


class Models:
    """Thread-safe, load-once registry of `Diffusion` objects by choice.

    Every model is built with the same `chunk_size`: a Stop takes effect
    within one chunk, and each object keeps its own compiled chunks, so
    sharing one object per model means compiling once for all sessions.
    `warm_chain` compiles the chain a Reset asks for before the session gets it,
    so concurrent first users wait for one compilation instead of each
    starting their own; a model's other samplers compile on first use.
    """

    def __init__(
        self,
        choices: dict[str, tuple[str, str]] | None = None,
        loader: Loader = Diffusion.from_pretrained,
        chunk_size: int = 10,
        warm: bool = True,
    ):
        self.choices = dict(CHOICES if choices is None else choices)
        self.chunk_size = chunk_size
        self.warm = warm
        self._loader = loader
        self._loaded: dict[str, Diffusion] = {}
        self._failed: dict[str, tuple[float, str]] = {}  # name -> (when, message)
        self._ran: set[tuple] = set()  # what has compiled: see `_program`
        self._loading: dict[str, threading.Lock] = {}
        self._warming: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()

    def add(self, choice: str, name: str | None = None, ema_name: str | None = None) -> str:
        """Offer a further choice (e.g. a .safetensors path); returns the choice."""
        if choice not in self.choices:
            name = name or choice
            self.choices[choice] = (name, ema_name or name)
        return choice

    def name(self, choice: str, ema: bool) -> str:
        if not isinstance(choice, str) or choice not in self.choices:
            raise ModelUnavailable(f"unknown model {choice!r}; choose one of {', '.join(self.choices)}")
        return self.choices[choice][1 if ema else 0]

    def is_loaded(self, choice: str, ema: bool = False) -> bool:
        if not isinstance(choice, str):  # whatever an API client sent: `get` names the problem
            return False
        with self._lock:
            return self.choices.get(choice, (None, None))[bool(ema)] in self._loaded

    def first_run(self, model: Diffusion, kind: str, n: int) -> bool:
        """True the first time `kind` runs on `model` at batch size n (it compiles
        then, which takes a while); records that it has run. While `warm_chain` compiles
        the same program (the server's start-up: a chain's denoise and diffuse), waits for it
        instead of compiling it again."""
        key = _program(model, kind, n)
        with self._lock:
            warming = self._warming.get(key)
        if warming is not None:
            with warming:
                pass
        with self._lock:
            new = key not in self._ran
            self._ran.add(key)
        return new

    def get(self, choice: str, ema: bool = False, sampler: str | None = None, steps: int | None = None) -> Diffusion:
        """The shared model for a choice, loading it on first use (once), on its own chain
        (all T steps of DDPM; a distilled model's N); with another sampler, or `steps`, the same model with that
        default chain (`Diffusion.respaced`: it shares the compiled UNet, and
        each sampler compiles once per server and batch size, whatever its steps). Loading
        compiles nothing: `warm_chain` does, for the chain a visitor asks for."""
        model = self._load(choice, ema)
        if sampler in (None, model.sampler.name) and steps in (None, model.num_timesteps):
            return model
        return model.respaced(steps, sampler)

    def _load(self, choice: str, ema: bool) -> Diffusion:
        name = self.name(choice, ema)
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            name_lock = self._loading.setdefault(name, threading.Lock())
        with name_lock:  # one load per name; other sessions wait for it
            with self._lock:
                if name in self._loaded:
                    return self._loaded[name]
            if name in self._failed:
                when, message = self._failed[name]
                wait = RETRY_AFTER_S - (time.monotonic() - when)
                if wait > 0:
                    raise ModelUnavailable(f"{message} (next try in {wait:.0f} s)")
            log.info("loading model %s", name)
            try:
                model = self._loader(name, chunk_size=self.chunk_size)
            except Exception as err:  # any failure to fetch or read becomes a page message
                log.warning("could not load %s: %s", name, err)
                label = f"{choice} (EMA)" if ema and name != self.choices[choice][0] else choice
                message = f"could not load {label}: {err}"
                self._failed[name] = (time.monotonic(), message)
                raise ModelUnavailable(message) from err
            with self._lock:
                self._loaded[name] = model
                self._failed.pop(name, None)
            return model

    def warm_chain(self, chain: Diffusion, n: int = 1):
        """Compile (or fetch from the persistent caches) what a Reset and a first Denoise and
        Diffuse of `chain` at batch size `n` run, once per server (with `warm`): a visitor who
        switches model waits for the chain they asked for only, not for every sampler's."""
        key, diffuse = _program(chain, "denoise", n), _program(chain, "diffuse", n)
        with self._lock:
            if not self.warm or key in self._ran:
                return
            lock = self._warming.setdefault(key, threading.Lock())
            self._warming.setdefault(diffuse, lock)  # a first Diffuse meanwhile waits too
        with lock:  # concurrent first users wait for one compilation
            with self._lock:
                if key in self._ran:
                    return
            t0 = time.perf_counter()
            warm_up(chain, n)
            with self._lock:
                self._ran |= {key, diffuse}
            log.info(
                "compiled the %s chain at batch size %d in %.1f s", chain.sampler.name, n, time.perf_counter() - t0
            )


def own_chain_only(model: Diffusion) -> bool:
    """A distilled model samples on its own chain only: it learned no other timesteps."""
    return model.diffusion_config.distilled_steps is not None


def page_chain(model: Diffusion) -> Diffusion:
    """`model` on the chain a new page starts on (`PAGE_SAMPLER` over `PAGE_CHAIN_STEPS`, fewer
    where the model's T allows fewer; a distilled model's own chain): the page's first Denoise
    runs it to a picture."""
    if own_chain_only(model):
        return model
    rule = samplers.get(PAGE_SAMPLER)
    return model.respaced(min(PAGE_CHAIN_STEPS, rule.max_steps(model.num_timesteps)), rule)


def warm_up(chain: Diffusion, n: int = 1):
    """Run x_T, one reverse chunk of `chain` and one forward chunk at batch size `n`: what a
    Reset, a first Denoise and a first Diffuse compile (or fetch from the persistent caches)."""
    x = next(chain.denoise_steps(n, 1, key=0)).x
    next(chain.diffuse_steps(n, 1, x=x, curr_step=chain.num_timesteps - 1, key=0)).x.block_until_ready()
