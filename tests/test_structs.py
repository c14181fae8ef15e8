"""Snapshots in a google.protobuf.Struct carry no double near money (shared/structs.py)."""

from __future__ import annotations

from shared.structs import to_struct


def test_whole_numbers_travel_as_decimal_strings_and_survive_beyond_a_double() -> None:
    # 2**53 + 1 is the first integer a double cannot hold: as a number it would arrive as
    # 9007199254740992, one fen short.
    s = to_struct({"amount": 2**53 + 1, "nested": {"fee": [1, -25]}, "hold": True,
                   "rate": "0.0060", "ratio": 0.5, "none": None})
    assert s.fields["amount"].string_value == "9007199254740993"
    assert [v.string_value for v in s.fields["nested"].struct_value.fields["fee"]
            .list_value.values] == ["1", "-25"]
    assert s.fields["hold"].bool_value is True
    assert s.fields["rate"].string_value == "0.0060"
    assert s.fields["ratio"].number_value == 0.5
    assert s.fields["none"].WhichOneof("kind") == "null_value"
