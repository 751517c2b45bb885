"""Samplers as values: a registry of reverse-step rules, chosen by name.

A `Sampler` names a pure step (`diffusion.py`), whether it reads the previous
step's prediction (multistep), how a chain of S steps picks its timesteps
(`coefficients.SPACINGS`) and, for DDIM, its eta. Adding a sampler is one
`register(Sampler(...))`; `Diffusion`, the commands and the demo ask this
registry for names and step-count limits (as score_sde's `register_predictor`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from .checks import check_float, check_int
from .coefficients import SPACINGS
from .diffusion import ddim_step, denoising_step, dpm_solver_pp_step

StepFn = Callable  # step(output, x, t, noise, coeffs, clip=..., [prev_x0=, has_prev=], [eta=]) -> (x_prev, pred_x0)


@dataclass(frozen=True)
class Sampler:
    """One reverse-step rule and what a chain of it needs.

    `step` is pure: step(output, x, t, noise, coeffs, clip=...) -> (x_{t-1}, pred_x0),
    t int32 (n,) chain indices; it reads the network's `output` (eps, v or x_0,
    as the config says) through `diffusion.model_prediction`. A `multistep` step also takes `prev_x0` (the
    previous step's pred_x0) and `has_prev` (a traced bool). `spacing` picks a
    chain's timesteps ("even": 1 <= S <= T, "linspace": 1 <= S <= T-1).
    `eta` is None for a sampler that has none; otherwise the value passed to
    the step as `eta=` (DDIM's, Song et al. eq. 16; 0 is deterministic).
    Frozen and hashable: a compiled chain is keyed by it.
    """

    name: str
    step: StepFn
    multistep: bool = False
    spacing: str = "even"
    eta: float | None = None
    description: str = ""

    def __post_init__(self):
        if self.spacing not in SPACINGS:
            raise ValueError(f"sampler {self.name!r}: unknown spacing {self.spacing!r}; valid: {', '.join(SPACINGS)}")

    def max_steps(self, num_timesteps: int) -> int:
        """The longest chain over a T-step process: T, or T-1 for linspace timesteps."""
        return num_timesteps if self.spacing == "even" else num_timesteps - 1

    def check_steps(self, steps: int | None, num_timesteps: int) -> int:
        """The chain length S for `steps` (None: all T where that is allowed), or ValueError."""
        most = self.max_steps(num_timesteps)
        if steps is None:
            if most < num_timesteps:
                raise ValueError(f"sampler {self.name!r} needs steps, 1 <= steps <= {most} (say steps=20)")
            return num_timesteps
        return check_int("steps", steps, 1, most)

    def with_eta(self, eta: float | None) -> Sampler:
        """This sampler with another eta; None keeps it. ValueError for one without eta."""
        if eta is None:
            return self
        if self.eta is None:
            raise ValueError(
                f"sampler {self.name!r} has no eta (only {', '.join(takes_eta())} take one); leave eta out"
            )
        return dataclasses.replace(self, eta=check_float("eta", eta, 0.0, 1.0))

    def apply(self, output, x, t, noise, coeffs, *, clip, prev_x0, has_prev):
        """One step with everything a chain has; each step function gets what it reads."""
        step = self.step if self.eta is None else partial(self.step, eta=self.eta)
        if self.multistep:
            return step(output, x, t, noise, coeffs, clip=clip, prev_x0=prev_x0, has_prev=has_prev)
        return step(output, x, t, noise, coeffs, clip=clip)


_REGISTRY: dict[str, Sampler] = {}


def register(sampler: Sampler) -> Sampler:
    """Add `sampler` under its name (ValueError if the name is taken); returns it."""
    if sampler.name in _REGISTRY:
        raise ValueError(f"a sampler named {sampler.name!r} is already registered")
    _REGISTRY[sampler.name] = sampler
    return sampler


def unregister(name: str) -> None:
    """Remove a registered sampler (tests register throwaway ones)."""
    _REGISTRY.pop(name)


def names() -> tuple[str, ...]:
    """The registered samplers' names, in registration order."""
    return tuple(_REGISTRY)


def takes_eta() -> tuple[str, ...]:
    return tuple(n for n, s in _REGISTRY.items() if s.eta is not None)


def get(sampler: str | Sampler, eta: float | None = None) -> Sampler:
    """A registered sampler by name (or a `Sampler` as it is), with `eta` if given."""
    if isinstance(sampler, Sampler):
        return sampler.with_eta(eta)
    if not isinstance(sampler, str) or sampler not in _REGISTRY:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[sampler].with_eta(eta)


register(
    Sampler("ddpm", denoising_step, description="ancestral sampling, Ho et al. 2020 Alg. 2 (strided when respaced)")
)
register(Sampler("ddim", ddim_step, eta=0.0, description="DDIM, Song et al. 2021 eq. 12 (eta 0: deterministic)"))
register(
    Sampler(
        "dpmpp_2m",
        dpm_solver_pp_step,
        multistep=True,
        spacing="linspace",
        description="DPM-Solver++(2M), Lu et al. 2022 Alg. 2",
    )
)
register(
    Sampler(
        "dpmpp_2m_sde",
        partial(dpm_solver_pp_step, sde=True),
        multistep=True,
        spacing="linspace",
        description="SDE-DPM-Solver++(2M), Lu et al. 2022",
    )
)

# Not registered (nothing to choose by name): the chain a distilled model was made for,
# DDIM eta 0 on trailing timesteps, whose halvings nest (Salimans & Ho 2022, Alg. 2).
DISTILLED = Sampler(
    "ddim_trailing",
    ddim_step,
    spacing="trailing",
    eta=0.0,
    description="DDIM (eta 0) on trailing timesteps round(i T/S) - 1: a distilled model's chain",
)


def default_sampler(config) -> tuple[Sampler, int | None]:
    """A model's own chain, from its `DiffusionConfig`: (DISTILLED, N) for a model distilled
    to N steps, else ("ddpm", None: all T)."""
    if config.distilled_steps is not None:
        return DISTILLED, config.distilled_steps
    return get("ddpm"), None
