from decimal import Decimal

import pytest

from a4co.money import MoneyError, from_minor_units, parse_amount, to_minor_units


@pytest.mark.parametrize("raw, expected", [
    ("12.50", Decimal("12.50")), (12.5, Decimal("12.50")), (3, Decimal("3.00")), ("0", Decimal("0.00")),
    ("1e2", Decimal("100.00")), (0.1, Decimal("0.10")), ("  7.1 ", Decimal("7.10")),
])
def test_parse_amount_accepts_numbers_and_decimal_strings(raw, expected):
    assert parse_amount(raw) == expected


@pytest.mark.parametrize("raw, message", [
    ("12.345", "at most 2 decimal places"), (-1, "negative"), ("abc", "number"), (None, "number"),
    (True, "number"), ("NaN", "finite"), ("Infinity", "finite"), ([], "number"), ("1e30", "below"),
])
def test_parse_amount_rejects_what_is_not_exact_money(raw, message):
    with pytest.raises(MoneyError, match=message):
        parse_amount(raw)


def test_parse_amount_accepts_trailing_zero_decimals():
    assert parse_amount("12.500") == Decimal("12.50")


def test_zero_decimal_currency_has_no_minor_units():
    assert to_minor_units(Decimal("1500"), "JPY") == 1500
    with pytest.raises(MoneyError):
        parse_amount("10.5", currency="JPY")


@pytest.mark.parametrize("amount, currency, minor", [
    (Decimal("12.34"), "EUR", 1234), (Decimal("0.01"), "USD", 1), (Decimal("100"), "EUR", 10000),
    (Decimal("999999.99"), "GBP", 99999999),
])
def test_minor_units_round_trip(amount, currency, minor):
    assert to_minor_units(amount, currency) == minor
    assert from_minor_units(minor, currency) == amount


def test_to_minor_units_refuses_fractions_of_a_cent():
    with pytest.raises(MoneyError):
        to_minor_units(Decimal("1.005"), "EUR")
