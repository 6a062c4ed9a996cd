"""Training objectives and the loss, over the library's forward process and input preconditioning.

The diffusion itself runs in plain [-1, 1] pixel space with dfedit's `NoiseSchedule`, so a trained
model drops into dfedit's loop (and its SDEdit/inpainting, which noise real images) unchanged.

The input preconditioning (per-channel standardisation, EDM's c_in made per-channel) is the
library's, dfedit.emoji.precondition, which `Diffusion` inherits: training and sampling feed the
network through the same code.

Objectives, in the manner of NVlabs/edm's training/loss.py (one class per loss): an `Objective`
owns everything that differs between eps-, v-, x0- and flow-prediction training, so the loop knows
none of it:
- `scheduler_config()`: the noise schedule it implies, the dict written into every checkpoint and
  read by `dfedit.schedule.NoiseSchedule.from_config` (built by the format, dfedit.emoji.config);
- `sample_t(...)`: how noise levels are drawn for a batch (uniformly over the schedule's T levels,
  for all four here; step.draw_batch calls it first, so the random stream is fixed);
- `target(...)`: what the network predicts (its output becomes a noise estimate through
  dfedit.schedule.output_to_eps, the same code in training, evaluation and sampling);
- `loss(...)`: per-sample MSE on the target, with min-SNR-gamma weighting (Hang et al.) through
  `x0_weight`, the weight plain MSE on the target puts on the x0 error.

    eps, v, x0: the cosine/linear/sigmoid VP schedule; targets eps, v = alpha eps - sigma x0, x0.
    flow:       flow matching, the course's part B: x_flow = (1 - s) x0 + s eps, target the
                velocity eps - x0, at flow times s = (t + 1) / (T + 1). Its schedule is abar_t =
                (1 - s)^2 / ((1 - s)^2 + s^2) (dfedit.schedule), because x_flow is the VP state
                x_t rescaled by sqrt((1 - s)^2 + s^2) = 1 / (alpha + sigma). The preconditioned input
                is scale-free, so the network sees exactly the same x_in whether it is built
                from x_flow or from x_t (tests/train/test_flow.py): a flow model is trained here on
                the VP state with the velocity target and needs no special case anywhere in dfedit.
                The course draws s ~ U[0, 1]; here s takes the T = 1000 values dfedit's loop runs
                at, so the network is trained exactly where it is evaluated.

A new objective is one subclass of `Objective` here, decorated with `@register`: its
`prediction_type`, `alias` (the --objective name) and `help` give the CLI its choices, help text and
messages. Only a network output of a new kind also needs dfedit/schedule.py: its conversion to a
noise estimate and its name in PREDICTION_TYPES, which the checkpoint schema reads.
"""

from __future__ import annotations

import torch

from dfedit.emoji.precondition import Preconditioning
from dfedit.errors import DfeditError
from dfedit.schedule import PREDICTION_TYPES, NoiseSchedule, noise_to

from .config import DiffusionConfig

Tensor = torch.Tensor


def _snr(ab: Tensor) -> Tensor:
    return ab / (1 - ab)


class Objective:
    """What the network is trained to predict, given x_t = alpha x0 + sigma eps (alpha = sqrt(abar)),
    and everything that follows from it (module docstring). Subclasses set `prediction_type` (the
    name in the scheduler config, which dfedit reads), `alias` (--objective NAME) and define
    `target` and `x0_weight`."""

    prediction_type: str = ""
    alias: str = ""
    help: str = ""  # a note for --help, where the name alone does not say enough
    # A noise schedule of its own (DiffusionConfig.beta_schedule), or None: --schedule chooses one.
    own_schedule: str | None = None

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
                 min_snr_gamma: float = 0.0):
        self.num_train_timesteps, self.beta_schedule = num_train_timesteps, beta_schedule
        self.min_snr_gamma = min_snr_gamma
        self.schedule = NoiseSchedule.from_config(self.scheduler_config())

    @staticmethod
    def from_config(cfg: DiffusionConfig) -> "Objective":
        """The objective a run's DiffusionConfig describes; a schedule it does not go with is one sentence."""
        if cfg.prediction_type not in OBJECTIVES:
            raise DfeditError(f"unsupported prediction_type {cfg.prediction_type!r} in the scheduler config")
        return OBJECTIVES[cfg.prediction_type](cfg.num_train_timesteps, cfg.beta_schedule, cfg.min_snr_gamma)

    # ---- the schedule it implies -----------------------------------------------------------------
    def scheduler_config(self) -> dict:
        """The noise schedule this objective trains on, as the checkpoint format writes it and dfedit
        reads it: DDPM's (cosine, linear, sigmoid) for eps/v/x0, flow times for flow. The dict itself
        is the format's (dfedit.emoji.config.DiffusionConfig.scheduler_config), written once there."""
        return DiffusionConfig(num_train_timesteps=self.num_train_timesteps, beta_schedule=self.beta_schedule,
                               prediction_type=self.prediction_type).scheduler_config()

    # ---- noise levels --------------------------------------------------------------------------
    def sample_t(self, n: int, generator: torch.Generator, device) -> Tensor:
        """Timesteps for a batch of n: uniform over the T levels the loop samples at."""
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator, device=device)

    # ---- what the network predicts -------------------------------------------------------------
    def target(self, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    # ---- the loss ------------------------------------------------------------------------------
    def x0_weight(self, ab: Tensor) -> Tensor:
        """SNR-style weight that plain MSE on the target puts on the x0 error, |d target|^2 = w |d x0|^2
        at fixed x_t, as a function of abar: min-SNR-gamma divides it out (Hang et al.)."""
        raise NotImplementedError

    def loss(self, out: Tensor, x0: Tensor, noise: Tensor, ab: Tensor) -> Tensor:
        """Per-sample MSE of the network output `out` on the target, min-SNR weighted if gamma > 0.
        ab: abar per sample, shaped (B, 1, 1, 1). Shape (B,)."""
        target = self.target(x0, noise, ab.sqrt(), (1 - ab).sqrt())
        per = ((out - target) ** 2).mean(dim=(1, 2, 3))
        g = self.min_snr_gamma
        if g > 0:
            # Hang et al.: weight = min(SNR, gamma) relative to the objective's implicit weight on x0.
            w = torch.clamp(_snr(ab).flatten(), max=g)
            per = per * (w / self.x0_weight(ab).flatten())
        return per


# One class per objective, by the prediction_type the scheduler config names; and the names
# --objective takes (each one's alias and its prediction_type) -> prediction_type.
OBJECTIVES: dict[str, type[Objective]] = {}
OBJECTIVE_ALIASES: dict[str, str] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Make `cls` a training objective: --objective ALIAS, or its prediction_type, trains it."""
    if cls.prediction_type not in PREDICTION_TYPES:  # dfedit could not sample the model it trains
        raise TypeError(f"{cls.__name__}: dfedit.schedule has no conversion for {cls.prediction_type!r}")
    taken = {n for o in OBJECTIVES.values() for n in (o.prediction_type, o.alias)}
    if {cls.prediction_type, cls.alias} & taken:  # a checkpoint names its objective by prediction_type
        raise TypeError(f"{cls.__name__}: {cls.prediction_type!r} or {cls.alias!r} names another objective")
    OBJECTIVES[cls.prediction_type] = cls
    OBJECTIVE_ALIASES.update({cls.alias: cls.prediction_type, cls.prediction_type: cls.prediction_type})
    return cls


@register
class EpsObjective(Objective):
    prediction_type, alias = "epsilon", "eps"

    def target(self, x0, eps, alpha, sigma):
        return eps

    def x0_weight(self, ab):
        return _snr(ab)


@register
class VObjective(Objective):
    prediction_type, alias = "v_prediction", "v"

    def target(self, x0, eps, alpha, sigma):
        return alpha * eps - sigma * x0

    def x0_weight(self, ab):
        return _snr(ab) + 1


@register
class X0Objective(Objective):
    prediction_type, alias = "sample", "x0"

    def target(self, x0, eps, alpha, sigma):
        return x0

    def x0_weight(self, ab):
        return torch.ones_like(ab)


@register
class FlowObjective(Objective):
    prediction_type, alias = "flow_prediction", "flow"
    help = "flow matching: velocity target, its own noise schedule"
    own_schedule = "flow"

    def target(self, x0, eps, alpha, sigma):
        return eps - x0

    def x0_weight(self, ab):
        # x0 = x_flow - s v at fixed x_flow, so |dv|^2 = |dx0|^2 / s^2, with s = sigma / (alpha + sigma).
        a, s = ab.sqrt(), (1 - ab).sqrt()
        return ((a + s) / s) ** 2


def objective_named(name: str) -> type[Objective] | None:
    """The objective --objective NAME means (its alias or its prediction_type); None if none."""
    return OBJECTIVES.get(OBJECTIVE_ALIASES.get(name, ""))


def objective_choices(notes: bool = True) -> str:
    """'eps, v, x0, or flow (...)': the objectives by --objective name, with their notes (`help`)
    for --help, without them for a message."""
    names = [o.alias + (f" ({o.help})" if notes and o.help else "") for o in OBJECTIVES.values()]
    return ", ".join(names[:-1]) + ", or " + names[-1] if len(names) > 1 else names[0]


class Diffusion(Preconditioning):
    """A run's objective plus the input preconditioning (dfedit.emoji.precondition: net_input,
    predict, to_eps), with the abar table on the training device."""

    def __init__(self, cfg: DiffusionConfig, mean: list[float], std: list[float], device="cpu"):
        self.cfg = cfg
        self.objective = Objective.from_config(cfg)
        super().__init__(self.objective.schedule, mean, std, device)

    def loss(self, net, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, text, mask,
             style=None) -> torch.Tensor:
        """Per-sample loss of the objective at timesteps t with this noise. Shape (B,)."""
        ab = self._ab(t)
        out = self.predict(net, noise_to(x0, noise, ab), t, text, mask, style=style).float()
        return self.objective.loss(out, x0, noise, ab)
