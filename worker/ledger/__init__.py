"""The ledger domain: plain functions that take a session and never commit.

- `record.py`: apply an event's accumulations, redemptions and gift cards.
- `reverse.py`: the reversal algorithm (SPEC §6).
- `wallet.py`: the primitives both share (locks, transactions, debts, expiry, tiers).
- `invariants.py`: the SPEC §3 invariants, checked by the tests after every scenario.
- `views.py`: the event and wallet as the API shows them.
"""
