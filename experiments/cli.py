"""The ``fedpriv`` console script: ``fedpriv assess [--quick] [OVERRIDES]`` (README "Assess your own model")."""

from __future__ import annotations

import sys

COMMANDS = ("assess",)


def main(argv: list[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] not in COMMANDS:
        raise SystemExit(f"usage: fedpriv {{{','.join(COMMANDS)}}} [--quick] [Hydra overrides]; "
                         f"got {' '.join(arguments) or 'no command'}")
    from experiments import assess  # imports JAX: only once the command is known

    sys.argv = [f"fedpriv {arguments[0]}", *arguments[1:]]
    assess.main(arguments[1:])


if __name__ == "__main__":
    main()
