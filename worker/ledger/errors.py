"""Domain errors. All of them are permanent: retrying cannot change the outcome."""

from __future__ import annotations


class LedgerError(Exception):
    """A request the ledger refuses; the event ends FAILED with this message."""

    code = "ledger_error"


class InsufficientBalance(LedgerError):
    code = "insufficient_balance"


class ShortfallRefused(LedgerError):
    code = "shortfall"


class InconsistentLedger(LedgerError):
    code = "inconsistent_ledger"


class UnknownReference(LedgerError):
    code = "unknown_reference"
