"""Node configuration (``nodes/<dept>/node.toml``); paths relative to the file.

::

    [node]
    name = "tax"                              # = CN of the node certificate
    coordinator = "127.0.0.1:50051"
    kit = "../../federation/kits/tax"
    state_dir = "../../federation/state/tax"
    policy = "policy.toml"
    crl_refresh_seconds = 60                  # optional: how often to fetch the revocation list

    [[datasets]]
    name = "income"
    schema = "schemas/income.toml"
    source = "../../data/social_assistance/tax/income.csv"   # .csv | .parquet | SQL URL
    # SQL sources: table = "..." or query = "SELECT ..."

    [hfl]                                     # optional; aggregator of horizontal-fl jobs
    listen = "0.0.0.0"                        # default 127.0.0.1 (SuperNodes on this host only)
    advertise = "fedgov-hub.example.gov.cn"   # what other hosts' SuperNodes dial (in its TLS cert)

    [ledger]                                  # optional; the node's witness of the coordinator's log
    witness_interval = 10                     # seconds between checks (and head gossip with peers)
    starve_after = 900                        # alarm when no new tree head arrives for this long
    witnesses = ["tax", "health", "civil"]    # the federation's departments (default: as listed by the coordinator)
    quorum = 2                                # cosignatures a head needs to count (default: a majority)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedgov.errors import ConfigError
from fedgov.hfl._superlink import listen_addresses
from fedgov.node.witness import WitnessSettings
from fedgov.policy import Policy, load_policy
from fedgov.schema import DatasetSchema, load_schema
from fedgov.tomlutil import check_keys, get_str, get_table, load_toml


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    schema: DatasetSchema
    source: str
    table: str | None
    query: str | None
    base_dir: Path


@dataclass(frozen=True)
class NodeConfig:
    name: str
    coordinator: str
    kit: Path
    state_dir: Path
    policy: Policy
    datasets: dict[str, DatasetConfig]
    path: Path
    #: where an aggregator's Flower SuperLink binds / the name SuperNodes dial
    hfl_listen: str = "127.0.0.1"
    hfl_advertise: str = "127.0.0.1"
    #: how often the node fetches the CA's revocation list from the coordinator
    crl_refresh_seconds: float = 60.0
    #: the ledger witness: interval, starvation limit, the federation's witnesses and quorum
    ledger: WitnessSettings = WitnessSettings()

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        """Load node.toml with its policy and schemas; every error names file and key."""
        doc = load_toml(path)
        where = str(path)
        check_keys(doc, ("node", "datasets", "hfl", "ledger"), where, required=("node",))
        ledger = WitnessSettings.from_table(get_table(doc, "ledger", where), f"{where}: ledger")
        hfl = get_table(doc, "hfl", where)
        check_keys(hfl, ("listen", "advertise"), f"{where}: hfl")
        hfl_listen, hfl_advertise = listen_addresses(
            get_str(hfl, "listen", f"{where}: hfl", default="127.0.0.1"),
            get_str(hfl, "advertise", f"{where}: hfl") if "advertise" in hfl else None,
            where=f"{where}: hfl",
        )
        node = get_table(doc, "node", where, required=True)
        w = f"{where}: node"
        check_keys(
            node,
            ("name", "coordinator", "kit", "state_dir", "policy", "crl_refresh_seconds"),
            w,
            required=("name", "coordinator", "kit", "state_dir", "policy"),
        )
        crl_refresh = node.get("crl_refresh_seconds", 60)
        if isinstance(crl_refresh, bool) or not isinstance(crl_refresh, int | float) or not 0.5 <= crl_refresh <= 86400:
            raise ConfigError(
                f"'crl_refresh_seconds' must be a number of seconds in [0.5, 86400], got {crl_refresh!r}", where=w
            )
        base = path.parent.resolve()
        raw_ds = doc.get("datasets", [])
        if not isinstance(raw_ds, list):
            raise ConfigError("'datasets' must be an array of tables [[datasets]]", where=where)
        datasets: dict[str, DatasetConfig] = {}
        for i, d in enumerate(raw_ds):
            wd = f"{where}: datasets[{i}]"
            if not isinstance(d, dict):
                raise ConfigError("must be a table", where=wd)
            check_keys(
                d, ("name", "schema", "source", "table", "query"), wd, required=("name", "schema", "source")
            )
            name = get_str(d, "name", wd)
            if name in datasets:
                raise ConfigError(f"dataset '{name}' listed twice", where=wd)
            schema = load_schema(base / get_str(d, "schema", wd))
            if schema.name != name:
                raise ConfigError(f"schema describes dataset '{schema.name}', not '{name}'", where=wd)
            datasets[name] = DatasetConfig(
                name=name,
                schema=schema,
                source=get_str(d, "source", wd),
                table=d.get("table"),
                query=d.get("query"),
                base_dir=base,
            )
        return cls(
            name=get_str(node, "name", w),
            coordinator=get_str(node, "coordinator", w),
            kit=(base / get_str(node, "kit", w)).resolve(),
            state_dir=(base / get_str(node, "state_dir", w)).resolve(),
            policy=load_policy(base / get_str(node, "policy", w)),
            datasets=datasets,
            path=path.resolve(),
            hfl_listen=hfl_listen,
            hfl_advertise=hfl_advertise,
            crl_refresh_seconds=float(crl_refresh),
            ledger=ledger,
        )
