"""The configuration tables are the ones operators read: every setting a service reads from
the environment is listed in the README with its real default, and nothing else; each
service document (docs/<service>.md) repeats its own settings with the same defaults."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import SecretStr
from pydantic.fields import FieldInfo

import services  # noqa: F401
from services.billing.settings import BillingSettings
from services.clearing.settings import ClearingSettings
from services.console.settings import ConsoleSettings
from services.payout_simulator.settings import PayoutSimulatorSettings
from services.settlement.settings import SettlementSettings
from shared import clock
from shared.settings import ServiceSettings

README = Path(__file__).resolve().parent.parent / "README.md"
SERVICE_SETTINGS = [
    (BillingSettings, "BILLING_"),
    (ClearingSettings, "CLEARING_"),
    (SettlementSettings, "SETTLEMENT_"),
]
ROW = re.compile(r"^\| `([A-Z_<>]+)` \| (.*?) \|", re.M)


def _rows() -> dict[str, str]:
    return {name: default.strip().strip("`") for name, default in ROW.findall(README.read_text())}


def _default(field: FieldInfo) -> str:
    """A default as the table writes it: str() of the value, `empty` for an empty string
    (a secret's too)."""
    value = field.default
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return str(value) or "empty"


def test_every_setting_of_a_service_is_in_the_readme_with_its_default():
    rows = _rows()
    common = set(ServiceSettings.model_fields)
    for cls, prefix in SERVICE_SETTINGS:
        for name, field in cls.model_fields.items():
            if name in common:
                assert f"<P>{name.upper()}" in rows, name
                continue
            assert f"{prefix}{name.upper()}" in rows, f"{prefix}{name.upper()} missing"
            assert rows[f"{prefix}{name.upper()}"] == str(field.default), name
    for name, field in PayoutSimulatorSettings.model_fields.items():
        assert rows.get(f"PAYOUT_SIM_{name.upper()}") == _default(field), name
    for name, field in ConsoleSettings.model_fields.items():
        assert rows.get(f"CONSOLE_{name.upper()}") == _default(field), name


# Common settings whose README cell is prose rather than a value.
DESCRIBED = {"database_url": "falls back to `DATABASE_URL`"}


def test_the_common_rows_give_each_services_real_default():
    """A `<P>` row's default is the base class's, or, where a service overrides it
    (port, schema, metrics port), each service's own, billing / clearing / settlement."""
    rows = dict(ROW.findall(README.read_text()))
    for name, field in ServiceSettings.model_fields.items():
        cell = rows[f"<P>{name.upper()}"].strip()
        if name in DESCRIBED:
            assert cell == DESCRIBED[name], name
            continue
        values = [cls.model_fields[name] for cls, _ in SERVICE_SETTINGS]
        if any(v.default != field.default for v in values):
            assert cell == " / ".join(f"`{_default(v)}`" for v in values), name
        else:
            assert cell.strip("`") == _default(field), name


def test_the_readme_lists_no_setting_that_does_not_exist():
    known = {f"<P>{n.upper()}" for n in ServiceSettings.model_fields} | {"DATABASE_URL", clock.ENV}
    for cls, prefix in [*SERVICE_SETTINGS, (PayoutSimulatorSettings, "PAYOUT_SIM_"),
                        (ConsoleSettings, "CONSOLE_")]:
        known |= {f"{prefix}{n.upper()}" for n in cls.model_fields}
    assert set(_rows()) - known == set()


SERVICE_DOCUMENTS = {
    BillingSettings: "billing.md", ClearingSettings: "clearing.md",
    SettlementSettings: "settlement.md",
}


def _document_rows(document: str) -> dict[str, str]:
    """The rows of a service document's `## Configuration` section."""
    text = (README.parent / "docs" / document).read_text()
    section = text[text.index("\n## Configuration") + 1:].split("\n## ", 1)[0]
    return {name: default.strip().strip("`") for name, default in ROW.findall(section)}


def test_each_service_document_lists_its_own_settings_with_their_defaults():
    """docs/<service>.md repeats the service's own settings (and may name a common one):
    each row a real setting with its real default, and none of its own left out."""
    common = set(ServiceSettings.model_fields)
    for cls, prefix in SERVICE_SETTINGS:
        rows = _document_rows(SERVICE_DOCUMENTS[cls])
        fields = {f"{prefix}{name.upper()}": field for name, field in cls.model_fields.items()}
        assert set(rows) - set(fields) == set(), cls.__name__
        for variable, default in rows.items():
            assert default == _default(fields[variable]), variable
        own = {f"{prefix}{name.upper()}" for name in cls.model_fields if name not in common}
        assert own - set(rows) == set(), SERVICE_DOCUMENTS[cls]
