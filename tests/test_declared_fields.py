"""The node's data loader yields only the fields (and datasets) the signed manifest declared.

A job handler is code the department runs on its own data; the loader it is
given is the last gate between the policy decision (made on the manifest's
declared fields) and the data. A handler that asks for more — a column the
policy never saw, another dataset — is refused, naming what it asked for.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedgov.errors import FedgovError
from fedgov.manifest import Participant
from fedgov.node.agent import NodeAgent
from fedgov.schema import load_schema
from tests.conftest import write_csv


def _dataset(tmp: Path, name: str, rows: int) -> SimpleNamespace:
    csv = write_csv(tmp / f"{name}.csv", ["id", "x", "secret"], [[i, i / 10, 1000 + i] for i in range(rows)])
    schema = tmp / f"{name}.toml"
    schema.write_text(
        f'[dataset]\nname = "{name}"\nkey = "id"\n'
        '[[fields]]\nname = "id"\ntype = "string"\nrequired = true\n'
        '[[fields]]\nname = "x"\ntype = "float"\n'
        '[[fields]]\nname = "secret"\ntype = "int"\n'
    )
    return SimpleNamespace(source=str(csv), schema=load_schema(schema), base_dir=tmp, table=None, query=None)


@pytest.fixture
def agent(tmp_path: Path) -> SimpleNamespace:
    """Just enough of a node for ``NodeAgent._task_loader``: its config and its real ``_read``."""
    config = SimpleNamespace(datasets={
        "data": _dataset(tmp_path, "data", 20),
        "holdout": _dataset(tmp_path, "holdout", 5),
        "other": _dataset(tmp_path, "other", 7),
    })
    node = SimpleNamespace(config=config)
    node._read = functools.partial(NodeAgent._read, node)
    return node


def test_loader_yields_only_declared_fields(agent: SimpleNamespace) -> None:
    me = Participant(node="alpha", dataset="data", fields=("id", "x"))
    load = NodeAgent._task_loader(agent, me)  # type: ignore[arg-type]
    table = load()
    assert table.column_names == ["id", "x"] and table.num_rows == 20
    assert load(["x"]).column_names == ["x"]
    # the attack: a handler asks for the field the policy never saw
    for ask in (["secret"], ["x", "secret"], ["id", "x", "secret"]):
        with pytest.raises(FedgovError, match="undeclared field.*secret"):
            load(ask)


def test_loader_reads_only_the_datasets_the_task_was_approved_for(agent: SimpleNamespace) -> None:
    me = Participant(node="alpha", dataset="data", fields=("id", "x"), extra={"eval_dataset": "holdout"})
    load = NodeAgent._task_loader(agent, me)  # type: ignore[arg-type]
    assert load(dataset="holdout").num_rows == 5  # its declared evaluation set
    with pytest.raises(FedgovError, match="dataset 'other' this task was not approved for"):
        load(dataset="other")
    with pytest.raises(FedgovError, match="undeclared field.*secret"):
        load(["secret"], dataset="holdout")
