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
from fedpriv.defenses.plans import (CombinedPrivacyConfig, DPFedAvgConfig, DPSGDConfig, LocalDPConfig,
                                    NoPrivacyConfig, PrivacyConfig, TieredDPSGDConfig)
from fedpriv.federated.checkpoints import CheckpointConfig
from fedpriv.federated.defense_stack import DefenseStack
from fedpriv.federated.distributed import DistributedConfig
from fedpriv.scenario import PrivacyOptions, ScenarioConfig

# The components a conf/defense/*.yaml may set (each null when off), in stack order.
STACK_COMPONENTS = ("dp_fedavg", "tiers", "local_dp", "compression", "protocol", "screening",
                    "robust_aggregation", "private_head", "audit_log", "model_screening")


def resolve_impl(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` with every ``auto`` impl knob replaced by the measured choice."""
    cfg = cfg.copy()
    choice = choose_compilation(str(cfg.model.name), num_devices=cfg.impl.get("num_devices"))
    with open_dict(cfg):
        for field in ("client_backend", "attack_loop", "attack_batching"):
            if cfg.impl[field] == "auto":
                cfg.impl[field] = getattr(choice, field)
    return cfg


def build_scenario(cfg: DictConfig, output_dir: str | None = None) -> ScenarioConfig:
    """Turns the composed config into a validated ``ScenarioConfig`` (no compute yet).

    ``output_dir`` is the run's folder, for artifacts the scenario writes itself (the
    audit log, the membership coins)."""
    cfg = resolve_impl(cfg)
    unknown = sorted(set(cfg.defense) - {"name", "dp_sgd", "l2_clip_norm", "noise_multiplier", *STACK_COMPONENTS})
    if unknown:
        raise ValueError(f"defense has unknown key(s) {unknown}; allowed: name, dp_sgd, l2_clip_norm, "
                         f"noise_multiplier, {', '.join(STACK_COMPONENTS)}")
    attack = None if cfg.attack.config is None else instantiate(cfg.attack.config, _convert_="all")
    federation = instantiate(cfg.algorithm, _convert_="all")
    federation.placement.check_devices()
    return ScenarioConfig(
        seed=int(cfg.seed),
        output_dir=output_dir,
        cohort=instantiate(cfg.data.cohort, _convert_="all"),
        test_fraction=float(cfg.data.test_fraction),
        partition=instantiate(cfg.data.partition, _convert_="all"),
        model_factory=instantiate(cfg.model, _convert_="all"),
        federation=federation,
        privacy=build_privacy_config(cfg),
        privacy_options=PrivacyOptions(
            delta=float(cfg.privacy.delta), accountant=str(cfg.privacy.accountant),
            stop_on_budget=bool(cfg.privacy.stop_on_budget), audit_trials=int(cfg.privacy.audit_trials),
            secure_randomness=bool(cfg.privacy.get("secure_randomness", False))),
        defenses=build_defense_stack(cfg),
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
        checkpoint=build_checkpoint(cfg),
    )


def build_distributed(cfg: DictConfig) -> DistributedConfig:
    """The run's ``impl.distributed`` settings (one process unless enabled); builds nothing else,
    so a multi-host run can join before anything starts JAX's backend."""
    settings = cfg.impl.get("distributed")
    return DistributedConfig() if settings is None else DistributedConfig(**OmegaConf.to_container(settings,
                                                                                                   resolve=True))


def build_privacy_config(cfg: DictConfig) -> PrivacyConfig:
    """The run's privacy config from the defense and privacy groups: the parts that are on,
    in client-stage order (local DP, DP-SGD plain or tiered, DP-FedAvg)."""
    defense, options = cfg.defense, cfg.privacy
    common = dict(delta=float(options.delta), accountant=str(options.accountant))
    parts = []
    if defense.get("local_dp") is not None:
        parts.append(LocalDPConfig(mechanism=instantiate(defense.local_dp, _convert_="all"), **common))
    if defense.get("tiers") is not None and not defense.get("dp_sgd", False):
        raise ValueError("defense.tiers needs example-level DP-SGD: set defense.dp_sgd=true")
    if defense.get("dp_sgd", False) and defense.get("tiers") is not None:
        parts.append(TieredDPSGDConfig(budgets=OmegaConf.to_container(defense.tiers.budgets, resolve=True),
                                       method=str(defense.tiers.method), l2_clip_norm=_number(defense.l2_clip_norm),
                                       **common))
    elif defense.get("dp_sgd", False):
        parts.append(DPSGDConfig(l2_clip_norm=_number(defense.l2_clip_norm),
                                 noise_multiplier=_optional_number(defense.noise_multiplier),
                                 target_epsilon=_number(options.target_epsilon),
                                 schedule=OmegaConf.to_container(options.schedule, resolve=True), **common))
    if defense.get("dp_fedavg") is not None:
        settings = defense.dp_fedavg
        parts.append(DPFedAvgConfig(l2_clip_norm=_number(settings.l2_clip_norm),
                                    noise_multiplier=_optional_number(settings.noise_multiplier),
                                    target_epsilon=_number(options.target_epsilon), **common))
    if not parts:
        return NoPrivacyConfig()
    return parts[0] if len(parts) == 1 else CombinedPrivacyConfig(parts=tuple(parts))


def _number(value):
    """YAML numbers as floats; anything else is left for the config's own check to name."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _optional_number(value):
    return None if value is None else _number(value)


def build_defense_stack(cfg: DictConfig) -> DefenseStack:
    """The defense group's non-privacy components as typed objects (null components stay off)."""
    defense = cfg.defense
    parts = {}
    for name in ("compression", "protocol", "screening", "robust_aggregation", "model_screening"):
        if defense.get(name) is not None:
            parts[name] = instantiate(defense[name], _convert_="all")
    return DefenseStack(name=str(defense.name), private_head=bool(defense.get("private_head", False)),
                        audit_log=bool(defense.get("audit_log", False)), **parts)


def flat_config(cfg: DictConfig) -> dict[str, object]:
    """The resolved config as flat ``config.<dotted.key>`` entries for ``metrics.json``."""
    container = OmegaConf.to_container(resolve_impl(cfg), resolve=True)
    container.pop("hydra", None)
    return _flatten(container)


def _flatten(container: dict) -> dict[str, object]:
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

    visit("config", container)
    return flat


# What every impl knob reads as in a run's fingerprint: impl choices never change results.
IMPL_PLACEHOLDER = "<impl>"


def run_fingerprint(cfg: DictConfig) -> dict[str, object]:
    """The resolved config a checkpoint must match, flat: everything but the ``impl`` knobs
    (also where they are interpolated, e.g. ``algorithm.backend``) and the ``checkpoint``
    section, which never change results (a run may resume on another backend or interval)."""
    blank = cfg.copy()
    with open_dict(blank):
        blank.impl = OmegaConf.create(_placeholders(OmegaConf.to_container(cfg.impl, resolve=False)))
    container = OmegaConf.to_container(blank, resolve=True)
    for section in ("hydra", "impl", "checkpoint"):
        container.pop(section, None)
    return {key: value for key, value in _flatten(container).items() if value != IMPL_PLACEHOLDER}


def _placeholders(node):
    return {key: _placeholders(value) for key, value in node.items()} if isinstance(node, dict) else IMPL_PLACEHOLDER


def build_checkpoint(cfg: DictConfig) -> CheckpointConfig | None:
    """The ``checkpoint`` section as a ``CheckpointConfig``, or ``None`` when ``checkpoint.every`` is null (off)."""
    section = cfg.get("checkpoint")
    if section is None or section.get("every") is None:
        return None
    unknown = sorted(set(section) - {"every", "dir", "keep"})
    if unknown:
        raise ValueError(f"checkpoint has unknown key(s) {unknown}; allowed: every, dir, keep")
    return CheckpointConfig(every=section.every, directory=None if section.get("dir") is None else str(section.dir),
                            keep=section.get("keep", 2), fingerprint=run_fingerprint(cfg))
