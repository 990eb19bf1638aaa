"""The ONE boundary from composed YAML to typed library objects (DESIGN §3.1, §5).

Only this module calls ``hydra.utils.instantiate``. Groups with a ``_target_`` become
their frozen dataclasses (which validate themselves); ``impl`` values of ``auto`` are
resolved from measurements before anything is built.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict
from hydra.utils import instantiate

from fedpriv.attacks import AttackCompilation
from fedpriv.compilation import choose_compilation
from fedpriv.scenario import DPSGDSettings, ScenarioConfig

DEFENSES = ("none", "dp_sgd")


def resolve_impl(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` with every ``auto`` impl knob replaced by the measured choice."""
    cfg = cfg.copy()
    choice = choose_compilation(str(cfg.model.name))
    with open_dict(cfg):
        for field in ("client_backend", "attack_loop", "attack_batching"):
            if cfg.impl[field] == "auto":
                cfg.impl[field] = getattr(choice, field)
    return cfg


def build_scenario(cfg: DictConfig) -> ScenarioConfig:
    """Turns the composed config into a validated ``ScenarioConfig`` (no compute yet)."""
    cfg = resolve_impl(cfg)
    defense = cfg.defense.name
    if defense not in DEFENSES:
        raise ValueError(f"defense.name must be one of {DEFENSES}, got {defense!r}")
    dp = None
    if defense == "dp_sgd":
        dp = DPSGDSettings(l2_clip_norm=float(cfg.defense.l2_clip_norm),
                           noise_multiplier=(None if cfg.defense.noise_multiplier is None
                                             else float(cfg.defense.noise_multiplier)),
                           target_epsilon=float(cfg.privacy.target_epsilon), delta=float(cfg.privacy.delta),
                           accountant=str(cfg.privacy.accountant),
                           schedule=OmegaConf.to_container(cfg.privacy.schedule, resolve=True),
                           stop_on_budget=bool(cfg.privacy.stop_on_budget),
                           audit_trials=int(cfg.privacy.audit_trials))
    attack = None if cfg.attack.config is None else instantiate(cfg.attack.config, _convert_="all")
    return ScenarioConfig(
        seed=int(cfg.seed),
        cohort=instantiate(cfg.data.cohort, _convert_="all"),
        test_fraction=float(cfg.data.test_fraction),
        partition=instantiate(cfg.data.partition, _convert_="all"),
        model_factory=instantiate(cfg.model, _convert_="all"),
        federation=instantiate(cfg.algorithm, _convert_="all"),
        dp=dp,
        delta=float(cfg.privacy.delta),
        attack=attack,
        attack_compilation=AttackCompilation(loop=str(cfg.impl.attack_loop),
                                              batching=str(cfg.impl.attack_batching),
                                              scan_chunk=int(cfg.impl.scan_chunk)),
        observe_round=int(cfg.attack.observe_round),
        num_victims=int(cfg.attack.num_victims),
        membership=(None if cfg.attack.get("membership") is None
                    else instantiate(cfg.attack.membership, _convert_="all")),
    )


def flat_config(cfg: DictConfig) -> dict[str, object]:
    """The resolved config as flat ``config.<dotted.key>`` entries for ``metrics.json``."""
    flat: dict[str, object] = {}

    def visit(prefix: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key not in ("_target_", "_partial_", "_convert_"):
                    visit(f"{prefix}.{key}", value)
        elif isinstance(node, list):
            flat[prefix] = ",".join(str(item) for item in node)
        else:
            flat[prefix] = node

    container = OmegaConf.to_container(resolve_impl(cfg), resolve=True)
    container.pop("hydra", None)
    visit("config", container)
    return flat
