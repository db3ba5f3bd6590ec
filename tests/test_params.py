"""One parameter schema per job kind; the owner's disclosure settings in policy.toml."""

from __future__ import annotations

import pytest

import fedgov.params as params
from fedgov.errors import ConfigError
from fedgov.manifest import parse_manifest
from fedgov.params.schema import KindSchema, Param, Setting, at_least
from fedgov.policy import parse_policy

PSI = """
[job]
kind = "psi"
purpose = "social-assistance-eligibility"
[[participants]]
node = "civil_affairs"
dataset = "applications"
fields = ["resident_id"]
[[participants]]
node = "tax"
dataset = "income"
fields = ["resident_id"]
[parameters]
"""


def test_every_registered_kind_has_a_schema() -> None:
    from fedgov.manifest import KINDS

    assert set(params.SCHEMAS) == set(KINDS)


def test_a_misspelt_parameter_is_refused_with_a_suggestion() -> None:
    m = parse_manifest(PSI + 'mdoe = "cardinality"\n')
    with pytest.raises(ConfigError, match=r"unknown psi parameter 'mdoe' \(did you mean 'mode'\?\)"):
        params.check_parameters(m.kind, m.parameters)


def test_wrong_types_and_values_are_named() -> None:
    with pytest.raises(ConfigError, match=r"'mode' must be one of 'align', 'cardinality'"):
        params.check_parameters("psi", {"mode": "everything"})
    with pytest.raises(ConfigError, match=r"'psi_workers' must be an integer"):
        params.check_parameters("psi", {"psi_workers": "2"})
    with pytest.raises(ConfigError, match=r"'epochs' must be >= 1"):
        params.check_parameters("vertical-lr", {"epochs": 0})
    with pytest.raises(ConfigError, match=r"unknown vertical-lr parameter 'epoch' \(did you mean 'epochs'\?\)"):
        params.check_parameters("vertical-lr", {"epoch": 3})


def test_defaults_are_filled_and_flower_spelling_is_accepted() -> None:
    assert params.check_parameters("psi", {}) == {"mode": "align"}
    assert params.check_parameters("horizontal-fl", {"local-steps": 3}) == {"local_steps": 3}
    with pytest.raises(ConfigError, match="name the same parameter"):
        params.check_parameters("horizontal-fl", {"local-steps": 3, "local_steps": 4})


def test_policy_rejects_an_unknown_disclosure_key() -> None:
    doc = {"datasets": {"income": {"disclosure": {"no_such_setting": 1}}}}
    with pytest.raises(ConfigError, match=r"datasets.income.disclosure: unknown key 'no_such_setting'"):
        parse_policy(doc, "policy.toml")


def _toy_kind(monkeypatch: pytest.MonkeyPatch) -> Setting:
    """Register a kind with one floor so the mechanism is tested apart from any real kind's values."""
    setting = Setting("toy_mask_bits_min", "int", 40, "smallest mask", kinds=("psi",), min=1)

    def refusals(manifest, participant, settings):  # noqa: ANN001, ANN202
        return at_least(manifest.parameters.get("mask_bits"), settings["toy_mask_bits_min"], "mask_bits",
                        "toy_mask_bits_min")

    toy = KindSchema("psi", (Param("mask_bits", "int"),), settings=(setting,), refusals=refusals)
    monkeypatch.setitem(params.SCHEMAS, "psi", toy)
    return setting


def test_the_safe_default_holds_when_the_policy_says_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    _toy_kind(monkeypatch)
    pol = parse_policy({"datasets": {"income": {"rules": []}}}, "policy.toml")
    assert pol.datasets["income"].disclosure["toy_mask_bits_min"] == 40
    m = parse_manifest(PSI + "mask_bits = 16\n")
    (refusal,) = params.disclosure_refusals(m, m.participant("tax"), pol.datasets["income"].disclosure,
                                            pol.datasets["income"].disclosure_source)
    assert str(refusal) == (
        "parameters.mask_bits = 16 is below this department's floor 40 "
        "(policy key policy.toml: datasets.income.disclosure.toy_mask_bits_min)"
    )
    stricter = parse_manifest(PSI + "mask_bits = 48\n")
    assert params.disclosure_refusals(stricter, stricter.participant("tax"), pol.datasets["income"].disclosure) == []


def test_dataset_settings_override_defaults_and_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    _toy_kind(monkeypatch)
    doc = {
        "defaults": {"disclosure": {"toy_mask_bits_min": 30}},
        "datasets": {"income": {"disclosure": {"toy_mask_bits_min": 50}}, "other": {}},
    }
    pol = parse_policy(doc, "policy.toml")
    assert pol.datasets["income"].disclosure["toy_mask_bits_min"] == 50
    assert pol.datasets["other"].disclosure["toy_mask_bits_min"] == 30
    with pytest.raises(ConfigError, match=r"'toy_mask_bits_min' must be >= 1"):
        parse_policy({"datasets": {"income": {"disclosure": {"toy_mask_bits_min": 0}}}}, "policy.toml")


def test_nested_tables_are_checked_key_by_key_with_a_suggestion() -> None:
    """A typo inside a table parameter is refused at submit, not after approval when the protocol reads it."""
    with pytest.raises(ConfigError, match=r"'dp' has unknown key 'epsilonn' \(did you mean 'epsilon'\?\)"):
        params.check_parameters("he-stats", {"dp": {"mechanism": "laplace", "epsilonn": 0.5}})
    with pytest.raises(ConfigError, match=r"'dp' key 'epsilon' must be >= 0, got -1"):
        params.check_parameters("he-stats", {"dp": {"epsilon": -1}})
    with pytest.raises(ConfigError, match=r"'dp' key 'mechanism' must be one of 'laplace', 'gaussian'"):
        params.check_parameters("he-stats", {"dp": {"mechanism": "none"}})
    with pytest.raises(ConfigError, match=r"'ckks' has unknown key 'poly_modulus' \(did you mean 'poly_modulus_degree'"):
        params.check_parameters("vertical-lr", {"ckks": {"poly_modulus": 8192}})
    with pytest.raises(ConfigError, match=r"'ckks' key 'coeff_mod_bit_sizes' must be a list of integers"):
        params.check_parameters("vertical-lr", {"ckks": {"coeff_mod_bit_sizes": [40, 40.5]}})
    with pytest.raises(ConfigError, match=r"'baseline' key 'compare' must be one of"):
        params.check_parameters("eligibility-check", {"baseline": {"field": "x", "compare": "=="}})
    ok = {"dp": {"mechanism": "gaussian", "epsilon": 0.5, "delta": 1e-6}}
    assert params.check_parameters("he-stats", ok)["dp"] == ok["dp"]


#: table parameters whose content the protocol parses itself (a rules file, a weight spec)
FREE_FORM = {("eligibility-check", "rules"), ("vertical-lr", "class_weight")}


def test_every_table_parameter_declares_its_keys() -> None:
    for kind, s in params.SCHEMAS.items():
        for p in s.params:
            if "table" in p.type and (kind, p.key) not in FREE_FORM:
                assert p.fields, f"{kind}: parameters.{p.key} is a table with no declared keys"


def test_list_parameters_hold_only_known_elements() -> None:
    from fedgov.params.he_stats import STATS
    from fedgov.protocols.he_stats import STATS as PROTOCOL_STATS

    assert STATS == PROTOCOL_STATS
    with pytest.raises(ConfigError, match=r"'stats' may hold only .* got 'varience' \(did you mean 'variance'\?\)"):
        params.check_parameters("he-stats", {"stats": ["count", "varience"]})
    assert params.check_parameters("he-stats", {"stats": ["count", "variance"]})["stats"] == ["count", "variance"]
