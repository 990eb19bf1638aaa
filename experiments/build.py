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
from fedpriv.federated.defense_stack import DefenseStack, DPFedAvgSettings, TierSettings
from fedpriv.scenario import DPSGDSettings, ScenarioConfig

# The components a conf/defense/*.yaml may set (each null when off), in stack order.
STACK_COMPONENTS = ("dp_fedavg", "tiers", "local_dp", "compression", "protocol", "screening",
                    "robust_aggregation", "private_head", "audit_ledger", "model_screening")


def resolve_impl(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` with every ``auto`` impl knob replaced by the measured choice."""
    cfg = cfg.copy()
    choice = choose_compilation(str(cfg.model.name))
    with open_dict(cfg):
        for field in ("client_backend", "attack_loop", "attack_batching"):
            if cfg.impl[field] == "auto":
                cfg.impl[field] = getattr(choice, field)
    return cfg


def build_scenario(cfg: DictConfig, output_dir: str | None = None) -> ScenarioConfig:
    """Turns the composed config into a validated ``ScenarioConfig`` (no compute yet).

    ``output_dir`` is the run's folder, for artifacts the scenario writes itself (the
    audit ledger)."""
    cfg = resolve_impl(cfg)
    defense = cfg.defense
    unknown = sorted(set(defense) - {"name", "dp_sgd", "l2_clip_norm", "noise_multiplier", *STACK_COMPONENTS})
    if unknown:
        raise ValueError(f"defense has unknown key(s) {unknown}; allowed: name, dp_sgd, l2_clip_norm, "
                         f"noise_multiplier, {', '.join(STACK_COMPONENTS)}")
    dp = None
    if defense.get("dp_sgd", False):
        dp = DPSGDSettings(l2_clip_norm=float(defense.l2_clip_norm),
                           noise_multiplier=(None if defense.noise_multiplier is None
                                             else float(defense.noise_multiplier)),
                           target_epsilon=float(cfg.privacy.target_epsilon), delta=float(cfg.privacy.delta),
                           accountant=str(cfg.privacy.accountant),
                           schedule=OmegaConf.to_container(cfg.privacy.schedule, resolve=True),
                           stop_on_budget=bool(cfg.privacy.stop_on_budget),
                           audit_trials=int(cfg.privacy.audit_trials))
    stack = build_defense_stack(cfg)
    attack = None if cfg.attack.config is None else instantiate(cfg.attack.config, _convert_="all")
    return ScenarioConfig(
        seed=int(cfg.seed),
        output_dir=output_dir,
        cohort=instantiate(cfg.data.cohort, _convert_="all"),
        test_fraction=float(cfg.data.test_fraction),
        partition=instantiate(cfg.data.partition, _convert_="all"),
        model_factory=instantiate(cfg.model, _convert_="all"),
        federation=instantiate(cfg.algorithm, _convert_="all"),
        dp=dp,
        defenses=stack,
        delta=float(cfg.privacy.delta),
        attack=attack,
        attack_compilation=AttackCompilation(loop=str(cfg.impl.attack_loop),
                                              batching=str(cfg.impl.attack_batching),
                                              scan_chunk=int(cfg.impl.scan_chunk)),
        attack_prior=(None if cfg.attack.get("prior") is None
                      else instantiate(cfg.attack.prior, _convert_="all")),
        public_records=int(cfg.attack.get("public_records", 512)),
        observe_round=int(cfg.attack.observe_round),
        num_victims=int(cfg.attack.num_victims),
        membership=(None if cfg.attack.get("membership") is None
                    else instantiate(cfg.attack.membership, _convert_="all")),
    )


def build_defense_stack(cfg: DictConfig) -> DefenseStack:
    """The defense group's stack components as typed objects (null components stay off)."""
    defense = cfg.defense
    parts = {}
    if defense.get("dp_fedavg") is not None:
        settings = defense.dp_fedavg
        parts["dp_fedavg"] = DPFedAvgSettings(
            l2_clip_norm=float(settings.l2_clip_norm),
            noise_multiplier=None if settings.noise_multiplier is None else float(settings.noise_multiplier),
            target_epsilon=float(cfg.privacy.target_epsilon), delta=float(cfg.privacy.delta),
            accountant=str(cfg.privacy.accountant), audit_trials=int(cfg.privacy.audit_trials))
    if defense.get("tiers") is not None:
        parts["tiers"] = TierSettings(budgets=OmegaConf.to_container(defense.tiers.budgets, resolve=True),
                                      method=str(defense.tiers.method))
    for name in ("local_dp", "compression", "protocol", "screening", "robust_aggregation", "model_screening"):
        if defense.get(name) is not None:
            parts[name] = instantiate(defense[name], _convert_="all")
    return DefenseStack(name=str(defense.name), private_head=bool(defense.get("private_head", False)),
                        audit_ledger=bool(defense.get("audit_ledger", False)), **parts)


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
