"""Money: `Decimal` in code, integer minor units at Stripe.

Amounts are validated once at the edge (API, message parsing) and stay `Decimal` with the
currency's exponent everywhere else. No float ever touches an amount.
"""
from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

# ISO 4217 currencies without minor units, as Stripe lists them.
ZERO_DECIMAL_CURRENCIES = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV",
     "XAF", "XOF", "XPF"}
)
SUPPORTED_CURRENCIES = frozenset({"EUR", "USD", "GBP", "CHF", "SEK", "NOK", "DKK", "PLN", "JPY"})


# Amounts are stored as NUMERIC(14, 2): twelve digits before the decimal point at most.
MAX_AMOUNT_DIGITS = 12


class MoneyError(ValueError):
    """An amount or currency that cannot be represented exactly."""


def currency_exponent(currency: str) -> int:
    return 0 if currency.upper() in ZERO_DECIMAL_CURRENCIES else 2


def parse_amount(value, *, currency: str = "EUR", allow_zero: bool = True) -> Decimal:
    """Parse a JSON number or decimal string into an exact Decimal.

    Raises MoneyError when the value is not a finite number, is negative, or carries more
    decimals than the currency allows (no silent rounding of money).
    """
    if isinstance(value, bool) or value is None:
        raise MoneyError("must be a number or a decimal string")
    if isinstance(value, float):
        # json gives floats for numbers like 12.5; repr() is the shortest exact round-trip.
        value = repr(value)
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise MoneyError("must be a number or a decimal string") from exc
    if not amount.is_finite():
        raise MoneyError("must be a finite number")
    if amount < 0:
        raise MoneyError("must not be negative")
    if amount.adjusted() >= MAX_AMOUNT_DIGITS:
        raise MoneyError(f"must be below 10^{MAX_AMOUNT_DIGITS}")
    if amount == 0 and not allow_zero:
        raise MoneyError("must be greater than zero")
    exponent = currency_exponent(currency)
    if -amount.as_tuple().exponent > exponent and amount != amount.quantize(Decimal(1).scaleb(-exponent)):
        raise MoneyError(f"must have at most {exponent} decimal places")
    return quantize(amount, currency)


def quantize(amount: Decimal, currency: str) -> Decimal:
    return amount.quantize(Decimal(1).scaleb(-currency_exponent(currency)), rounding=ROUND_HALF_EVEN)


def to_minor_units(amount: Decimal, currency: str) -> int:
    """Decimal major units -> integer minor units (12.34 EUR -> 1234). Exact or MoneyError."""
    scaled = amount.scaleb(currency_exponent(currency))
    if scaled != scaled.to_integral_value():
        raise MoneyError(f"{amount} {currency} is not a whole number of minor units")
    return int(scaled)


def from_minor_units(minor: int, currency: str) -> Decimal:
    return quantize(Decimal(minor).scaleb(-currency_exponent(currency)), currency)
