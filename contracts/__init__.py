"""The bottom layer: what every other package agrees on, importing none of them.

- `contracts.spec`    the sweep spec schema, its loading and validation, rungs resolved with their identity
- `contracts.shapes`  model shapes (`MAEConfig`, `ViTShape`) and the named size ladder
- `contracts.cost`    parameters, FLOPs and memory from a shape alone
- `contracts.tasks`   the task catalog and the one rule for a metric's direction
- `contracts.names`   MLflow keys and tags
- `contracts.layout`  every path a sweep writes, and how records are written
- `contracts.errors`  the error a user can fix (exit code 2)

Nothing here imports torch, Ray or MLflow, so `sweep validate/plan/status` start fast and
any layer can import it. docs/architecture.md explains the layers.
"""

# The layers, bottom first. A module may import its own package and packages of lower
# layers only; packages of one layer do not import each other. tests/test_layers.py checks
# every import of every module (those inside functions too) against this.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("contracts",),
    ("models",),
    ("data4d",),
    ("evals", "reports"),
    ("orchestrator",),
)
